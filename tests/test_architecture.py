"""One place for each idea: methods are objects the pipeline asks for capabilities, every
hyperparameter is declared once and the CLI, the form's share link, the summary and the bench
parser follow the declaration, and every entry point resolves default data in one order."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import asdict

import pytest
import torch
from conftest import REPO, word_text

from spap_core.cli import build_parser, prune_settings
from spap_core.data.texts import default_text_spec
from spap_core.errors import SpapInputError
from spap_core.methods.allocation import ALLOCATION_STRATEGIES, GlobalSettings
from spap_core.methods.base import PruningMethod
from spap_core.methods.baselines import FlapSettings
from spap_core.methods.obs import ObsSettings
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.pipeline.parameters import (
    PARAMETERS,
    SETTINGS_PARAMETERS,
    changed,
    describe,
    parameter,
    settings_values,
    with_values,
)
from spap_core.pipeline.walk import prune_model
from spap_core.problem.objective import LayerDecision, LayerProblem, RefitSettings, keep_from_pruned, lowest, refit

CALIBRATION = torch.randint(3, 200, (4, 32), generator=torch.Generator().manual_seed(0))


def test_the_pipeline_never_tests_a_method_name():
    """The walk asks the method object; no `settings.method ==` or a method's name string in it."""
    source = (REPO / "spap_core" / "pipeline" / "walk.py").read_text()
    tree = ast.parse(source)
    names = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not names & set(METHODS), names & set(METHODS)
    assert "settings.method ==" not in source


def test_a_new_method_is_one_class_and_one_registry_entry(tiny, monkeypatch):
    class LowestIndex(PruningMethod):
        """Prunes the channels of lowest index (a deliberately naive rule) with a plain refit."""

        name = "lowest-index"
        description = "test method"

        def decide(self, problem: LayerProblem, settings, layer, on_step=None, cancel=None) -> LayerDecision:
            keep = keep_from_pruned(problem.width, lowest(problem, torch.arange(problem.width, dtype=torch.float64)))
            return refit(problem, keep, RefitSettings(bias=False))

    monkeypatch.setitem(METHODS, "lowest-index", LowestIndex())
    result = prune_model(tiny, CALIBRATION, PruneSettings(method="lowest-index", sparsity=0.25), batch_size=4)
    assert all(record.keep.min() == 32 for record in result.layers)  # channels 0..31 of 128 pruned
    assert not result.trace


def test_method_settings_travel_with_the_method_and_old_records_still_load():
    fasp = PruneSettings(method="fasp", sparsity=0.4)
    assert type(fasp.options).__name__ == "NoSettings" and not hasattr(fasp.options, "refit")
    flap = PruneSettings(method="flap", sparsity=0.4)
    assert asdict(flap.options) == {"bias": True} and not hasattr(flap.options, "penalty")
    for settings in (fasp, flap):
        assert PruneSettings.from_dict(json.loads(json.dumps(asdict(settings)))) == settings
    spap = with_values(PruneSettings(), {"K": 7, "bias": False})
    assert PruneSettings.from_dict(json.loads(json.dumps(asdict(spap)))) == spap
    legacy = {"method": "spap", "sparsity": 0.3, "target_correction": 0.0,
              "penalty": asdict(spap.options.penalty), "refit": asdict(spap.options.refit),
              "altmin": asdict(spap.options.altmin)}
    assert PruneSettings.from_dict(legacy) == spap
    # a record from before the Adam steps' precision existed ran them in float32, today's default
    before_precision = asdict(spap)
    del before_precision["options"]["altmin"]["precision"]
    assert PruneSettings.from_dict(before_precision) == spap and spap.options.altmin.precision == "float32"
    with pytest.raises(SpapInputError, match="takes SpapSettings"):
        PruneSettings(method="spap", options=fasp.options)


def test_every_declared_parameter_is_a_cli_flag_with_the_settings_default():
    """Every method's own parameters are flags of `prune`: absent, the method's defaults; given,
    their value; the default is in the help."""
    for name in METHODS:
        args = build_parser().parse_args(["prune", "--method", name])
        assert prune_settings(args) == PruneSettings(method=name)
    defaults = PruneSettings()
    args = build_parser().parse_args(["prune", "-K", "9", "--no-bias", "--delta", "0.2", "--schedule", "fixed"])
    assert prune_settings(args) == with_values(defaults, {"K": 9, "bias": False, "delta": 0.2, "schedule": "fixed"})
    obs = build_parser().parse_args(["prune", "--method", "obs", "--obs-block", "4", "--obs-damping", "0.1",
                                     "--no-obs-bias"])
    assert prune_settings(obs).options == ObsSettings(block=4, damping=0.1, bias=False)
    flap = build_parser().parse_args(["prune", "--method", "flap", "--no-flap-bias"])
    assert prune_settings(flap).options == FlapSettings(bias=False)
    for name in ALLOCATION_STRATEGIES:
        args = build_parser().parse_args(["prune", "--allocation", name])
        assert prune_settings(args) == PruneSettings(allocation=name)
    spread = build_parser().parse_args(["prune", "--allocation", "global", "--max-deviation", "0.05",
                                        "--outlier-factor", "3"])
    assert prune_settings(spread).allocation_options == GlobalSettings(max_deviation=0.05, outlier_factor=3.0)
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["prune"].format_help().split())
    own = [p for p in SETTINGS_PARAMETERS if p.method is not None or p.allocation is not None]
    assert {"max_deviation", "outlier_factor"} <= {p.key for p in own}
    for declared in own:
        defaults = PruneSettings(method=declared.method or "spap", allocation=declared.allocation or "uniform")
        assert f"Default: {declared.format(declared.read(defaults))}." in help_text, declared.key


@pytest.mark.parametrize(("argv", "message"), [
    (["--method", "flap", "-K", "9"], "--iterations (-K) is a setting of --method spap, not of flap"),
    (["--method", "spap", "--obs-block", "4"], "--obs-block is a setting of --method obs, not of spap"),
    (["--method", "obs", "--no-flap-bias"], "--flap-bias is a setting of --method flap, not of obs"),
    (["--method", "fasp", "--no-bias"], "--bias is a setting of --method spap, not of fasp"),
    (["--reconstruction", "refit", "--altmin-steps", "10"],
     "--altmin-steps sets spap's own weight update, which --reconstruction refit replaces"),
    (["--max-deviation", "0.05"], "--max-deviation is a setting of --allocation global, not of uniform"),
    (["--allocation", "fisher", "--outlier-factor", "3"],
     "--outlier-factor is a setting of --allocation global, not of fisher"),
])
def test_a_flag_the_run_would_not_use_is_refused_in_one_line(argv, message, capsys, tiny_dir):
    from spap_core.cli import main

    assert main(["prune", "--model", str(tiny_dir), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_values_from_links_and_bench_overrides_are_parsed_and_checked():
    settings = with_values(PruneSettings(), {"K": "12", "bias": "false", "alpha": "0.25", "score": "partial"})
    assert settings_values(settings)["K"] == 12 and settings.options.refit.bias is False
    assert settings.options.penalty.momentum == 0.25 and settings.options.penalty.score == "partial"
    for key, value, message in (("K", "2.5", "whole number"), ("tau", "0.5", "τ must be between 1.05 and 8"),
                                ("score", "bogus", "score must be one of"), ("bias", "maybe", "true or false"),
                                ("nope", "1", "Unknown hyperparameter")):
        with pytest.raises(SpapInputError, match=message):
            with_values(PruneSettings(), {key: value})


def test_the_summary_names_every_value_but_the_omitted_ones():
    settings = with_values(PruneSettings(), {"K": 7})
    line = describe(settings)
    assert "K = 7" in line and "sparsity 30%" in line and "δ = 0.1" in line
    assert ("K = " not in describe(settings, omit={"K"})
            and not re.search(r"(?<!head )sparsity", describe(settings, omit={"sparsity"})))
    assert describe(PruneSettings(method="flap")) == "method flap, sparsity 30%, head sparsity 0%, FLAP bias true"
    assert describe(PruneSettings(method="obs")) == ("method obs, sparsity 30%, head sparsity 0%, OBS block = 1, "
                                                     "γ = 0.01, OBS bias true")
    assert describe(PruneSettings(method="fasp")) == "method fasp, sparsity 30%, head sparsity 0%"
    spread = PruneSettings(method="fasp", allocation="global")
    assert describe(spread) == "method fasp, sparsity 30%, head sparsity 0%, global allocation"
    narrow = with_values(spread, {"max_deviation": 0.05})
    assert describe(narrow) == "method fasp, sparsity 30%, head sparsity 0%, global allocation, max deviation = 0.05"
    assert changed(narrow, spread) == ["max deviation = 0.05"]
    assert changed(narrow, PruneSettings(method="fasp")) == ["global allocation", "max deviation = 0.05"]
    assert {p.key for p in PARAMETERS} >= {"sparsity", "K", "tau", "alpha", "rho0", "delta", "nsamples"}
    assert parameter("K").symbol == "K" and parameter("delta").log_scale


def test_one_default_data_order_for_every_entry_point(monkeypatch, tmp_path):
    """A configured file, then the local data folder, then the hub: the local copy wins even where
    the hub answers, so the CLI, the app and the benchmarks calibrate on the same text."""
    import spap_core.data.texts as data
    from pages._requests import _default_text_choice

    (tmp_path / "wikitext-2").mkdir()
    for name in ("wiki.valid.tokens", "wiki.test.joined.txt"):
        (tmp_path / "wikitext-2" / name).write_text(word_text(200))
    for variable in ("SPAP_CALIB_FILE", "SPAP_EVAL_FILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(data, "hub_unreachable_reason", lambda: None)  # the hub answers
    monkeypatch.setenv("SPAP_DATA_DIR", str(tmp_path))
    local = str(tmp_path / "wikitext-2" / "wiki.valid.tokens")
    assert default_text_spec("calibration") == local
    assert _default_text_choice("calibration").path == local
    chosen = tmp_path / "mine.txt"
    chosen.write_text(word_text(200))
    monkeypatch.setenv("SPAP_CALIB_FILE", str(chosen))
    assert default_text_spec("calibration") == str(chosen) == _default_text_choice("calibration").path
    monkeypatch.delenv("SPAP_CALIB_FILE")
    monkeypatch.delenv("SPAP_DATA_DIR")
    assert default_text_spec("calibration") == "wikitext2" and _default_text_choice("calibration").kind == "hub"


def test_the_benchmarks_parse_overrides_with_the_same_keys(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from common import parse_overrides, settings_with

    settings = settings_with(parse_overrides("am_rounds=0,K=1,alpha=1.0"), 0.4)
    assert settings == with_values(PruneSettings(sparsity=0.4), {"am_rounds": 0, "K": 1, "alpha": 1.0})
    assert settings_with(parse_overrides("method=flap"), 0.3) == PruneSettings(method="flap")
    with pytest.raises(SpapInputError):
        settings_with(parse_overrides("penalty.iterations=3"), 0.3)  # the old dotted paths are refused
    assert settings_with(parse_overrides("allocation=global,method=flap"), 0.4) == PruneSettings(
        method="flap", sparsity=0.4, allocation="global")
    with pytest.raises(SpapInputError):
        settings_with(parse_overrides("allocation=owl"), 0.4)
    narrow = settings_with(parse_overrides("allocation=global,max_deviation=0.05"), 0.4)
    assert narrow.allocation_options == GlobalSettings(max_deviation=0.05)
    with pytest.raises(SpapInputError, match="max_deviation is a setting of the global allocation"):
        settings_with(parse_overrides("max_deviation=0.05"), 0.4)


PRODUCT = ("spap_core", "spap_service", "pages", "app.py", "serve.py")
# spap_core's packages from the bottom up: a package imports only from lower layers (and from itself)
CORE_LAYERS = (("errors",), ("schema", "system"), ("data", "problem"), ("models",), ("methods", "evaluation"),
               ("recovery",), ("pipeline",), ("storage",), ("runner",), ("cli",), ("__main__",))


def _module_name(path):
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _product_imports():
    """Every product module → the product modules it imports, at any depth of the file (a function-level
    import is an import too)."""
    paths = [path for entry in PRODUCT for path in
             ((REPO / entry).rglob("*.py") if (REPO / entry).is_dir() else [REPO / entry])]
    known = {_module_name(path) for path in paths}
    graph = {}
    for path in paths:
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[_module_name(path)] = {name for name in imported if name in known}
    return graph


def test_no_product_module_is_part_of_an_import_cycle():
    graph = _product_imports()
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" → ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_imports_flow_one_way_core_then_service_then_pages_then_the_router():
    order = {"spap_core": 0, "spap_service": 1, "pages": 2, "app": 3, "serve": 3}
    offenders = [f"{module} imports {target}" for module, targets in _product_imports().items() for target in targets
                 if order[target.split(".")[0]] > order[module.split(".")[0]]]
    assert not offenders, offenders


def test_spap_cores_packages_import_only_from_lower_layers():
    layer = {package: level for level, packages in enumerate(CORE_LAYERS) for package in packages}
    assert set(layer) == {path.stem for path in (REPO / "spap_core").iterdir()
                          if path.stem not in ("__init__", "__pycache__") and (path.is_dir() or path.suffix == ".py")}
    offenders = []
    for module, targets in _product_imports().items():
        parts = module.split(".")
        if parts[0] != "spap_core" or len(parts) == 1:
            continue  # spap_core/__init__ is the public API: it may name anything
        for target in targets:
            if target == "spap_core":
                continue
            source, imported = parts[1], target.split(".")[1]
            if imported != source and layer[imported] >= layer[source]:
                offenders.append(f"{module} imports {target}")
    assert not offenders, offenders


def test_service_layer_and_core_never_import_streamlit():
    for package in ("spap_core", "spap_service"):
        for module in (REPO / package).rglob("*.py"):
            tree = ast.parse(module.read_text())
            imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                        for alias in node.names}
            imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                         if isinstance(node, ast.ImportFrom)}
            assert "streamlit" not in imported and "pages" not in imported, module


def test_benchmark_resume_measures_again_the_rows_of_another_recovery(monkeypatch):
    """A table's rows record the alternating minimization they ran; --resume keeps a row only
    where today's settings would run the same one (rows from before the record: only without one)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from common import recovery_description, recovery_record, rows_of_current_recovery

    today = recovery_record(PruneSettings())
    former = {"rounds": 2, "steps": 10, "lr": 0.001, "batch_tokens": 2048}
    # today's steps, recorded before their precision was: they ran in float32, today's default
    before_precision = {"rounds": 1, "steps": 40, "lr": 0.001, "batch_tokens": 256}
    bfloat16_steps = {**today, "precision": "auto"}
    rows = [{"method": "spap"}, {"method": "flap"}, {"method": "spap", "altmin": former},
            {"method": "spap", "altmin": before_precision}, {"method": "spap", "altmin": bfloat16_steps},
            {"method": "spap", "altmin": today}, {"method": "flap", "altmin": None}]
    kept = rows_of_current_recovery(rows, lambda row: PruneSettings(method=row["method"]))
    assert kept == [{"method": "flap"}, {"method": "spap", "altmin": before_precision},
                    {"method": "spap", "altmin": today}, {"method": "flap", "altmin": None}]
    assert set(recovery_description(rows).split("; ")) == {
        "2 × 10 Adam steps of 2048 tokens, lr 0.001, float32 products",
        "1 × 40 Adam steps of 256 tokens, lr 0.001, float32 products",
        "1 × 40 Adam steps of 256 tokens, lr 0.001, auto products"}
    assert recovery_description([{"method": "flap", "altmin": None}]) == "none in these rows"


PROJECTION_NAMES = {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "c_fc", "c_proj",
                    "dense_h_to_4h", "dense_4h_to_h", "mlp", "act_fn", "activation_fn"}


def test_nothing_outside_the_adapters_names_a_projection():
    """Family knowledge lives in spap_core/adapters: no other module of the library, the service or
    the pages reaches a model's modules by name (attribute or string)."""
    offenders = []
    for folder in ("spap_core", "spap_service", "pages"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if "adapters" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                named = (node.attr if isinstance(node, ast.Attribute) else
                         node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
                if named in PROJECTION_NAMES:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {named}")
    assert not offenders, offenders


def test_the_walk_is_a_few_short_generic_steps():
    """The walk reads as one story: no function over 60 lines, and the trace it keeps is the
    method's step record, not SPAP's."""
    tree = ast.parse((REPO / "spap_core" / "pipeline" / "walk.py").read_text())
    lengths = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert max(lengths.values()) <= 60, lengths
    assert "SpapStep" not in (REPO / "spap_core" / "pipeline" / "walk.py").read_text()


def test_the_tree_is_ruff_clean():
    """The lint settings in pyproject.toml hold for every file, so the README's test command checks them."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e .[dev])")
    checked = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout[-3000:]


def test_the_product_code_is_mypy_clean():
    """The type settings in pyproject.toml hold for the product code (spap_core, spap_service, pages, app.py)."""
    import shutil
    import subprocess

    mypy = shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy is not installed (pip install -e .[dev])")
    checked = subprocess.run([mypy, "--no-incremental", "--cache-dir", "/dev/null"], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout[-3000:]


def test_the_tests_mirror_the_source():
    """Each folder of tests/ stands for the source folder of the same path (tests/spap_core/models/
    holds the tests of spap_core/models/), so a module's tests are found where the module is."""
    folders = [path for path in (REPO / "tests").rglob("*") if path.is_dir() and path.name != "__pycache__"]
    assert folders
    strays = [str(folder.relative_to(REPO)) for folder in folders
              if not (REPO / folder.relative_to(REPO / "tests")).is_dir()]
    assert not strays, strays
