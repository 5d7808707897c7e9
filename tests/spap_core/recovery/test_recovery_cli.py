"""Recovery through the CLI and the run API: `prune --recover …` prints `ppl_before_recovery` beside
`ppl`, saves the merged model (plain transformers, the pruned parameter count), and its record reads
back; a record without a recovery (an old one included) still reads; every bad input is refused in
one `error:` line before the model loads."""

from __future__ import annotations

import json

import pytest
from cli_helpers import last_json_line, prune_args, run
from family_models import parameters
from transformers import AutoModelForCausalLM

import spap_core.cli as cli
import spap_core.runner.execute as execute
from spap_core.data.texts import text_from_file
from spap_core.errors import SpapInputError, UnreadableRunError
from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import Placement, load_model
from spap_core.recovery.settings import RecoverySettings
from spap_core.runner.spec import RunSpec, RunTexts
from spap_core.storage.runs import read_record, read_run

RECOVER = ("--method", "magnitude", "--recover", "lora", "--recover-steps", "4", "--recover-lr", "1e-2",
           "--recover-heldout-every", "2")


@pytest.fixture()
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(cli, "load_model", refuse)


def only_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_prune_with_recovery_prints_both_perplexities_and_saves_the_merged_model(tiny_dir, text_files, tmp_path,
                                                                                  capsys):
    out = tmp_path / "recovered"
    assert run(prune_args(tiny_dir, text_files, *RECOVER, "--out", str(out))) == 0
    printed = last_json_line(capsys.readouterr().out)
    assert printed["ppl_before_recovery"] >= 1 and printed["ppl"] >= 1
    assert printed["ppl"] != printed["ppl_before_recovery"]
    assert len(printed["window_nll_before_recovery"]) == 3 and printed["ppl_before_recovery_ci95"] is not None
    recovery = printed["recovery"]
    assert recovery["steps_done"] == 4 and recovery["settings"]["mode"] == "lora" and len(recovery["losses"]) == 4
    assert recovery["final_loss"] == recovery["losses"][-1] and [s for s, _ in recovery["heldout_ppl"]] == [2, 4]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert parameters(reloaded) == printed["params_after"] < printed["params_before"]
    record, _ = read_run(out)
    assert {key: record[key] for key in ("ppl", "ppl_before_recovery", "recovery")} == \
        {key: printed[key] for key in ("ppl", "ppl_before_recovery", "recovery")}


def test_a_run_without_recovery_has_none_and_an_old_record_still_reads(tiny_dir, text_files, tmp_path, capsys):
    out = tmp_path / "plain"
    assert run(prune_args(tiny_dir, text_files, "--method", "magnitude", "--out", str(out))) == 0
    printed = last_json_line(capsys.readouterr().out)
    assert printed["ppl_before_recovery"] is None and printed["recovery"] is None
    results = out / "results.json"
    old = {key: value for key, value in json.loads(results.read_text()).items()
           if key not in ("ppl_before_recovery", "ppl_before_recovery_ci95", "window_nll_before_recovery", "recovery")}
    results.write_text(json.dumps(old))
    record = read_record(out)
    assert (record["ppl_before_recovery"], record["recovery"], record["window_nll_before_recovery"]) == (None, None, [])


@pytest.mark.parametrize("spoiled", [{"ppl_before_recovery": 0.5}, {"recovery": {"steps_done": 3}},
                                     {"recovery": "yes"}, {"window_nll_before_recovery": ["x"]}])
def test_a_spoiled_recovery_field_is_refused_naming_the_file(tiny_dir, text_files, tmp_path, capsys, spoiled):
    out = tmp_path / "recovered"
    assert run(prune_args(tiny_dir, text_files, *RECOVER, "--out", str(out))) == 0
    results = out / "results.json"
    results.write_text(json.dumps({**json.loads(results.read_text()), **spoiled}))
    with pytest.raises(UnreadableRunError) as caught:
        read_record(out)
    assert str(caught.value).startswith(str(results)) and "\n" not in str(caught.value)


@pytest.mark.parametrize("flags, expected", [
    (("--recover-steps", "0"), "--recover-steps must be between 1 and 100000 (got 0)"),
    (("--recover-steps", "-1"), "--recover-steps must be between 1 and 100000 (got -1)"),
    (("--recover-steps", "1000000000"), "--recover-steps must be between 1 and 100000 (got 1000000000)"),
    (("--recover-rank", "0"), "--recover-rank must be between 1 and 1024 (got 0)"),
    (("--recover-lr", "nan"), "--recover-lr must be between 1e-07 and 1 (got nan)"),
    (("--recover-lr", "-1"), "--recover-lr must be between 1e-07 and 1 (got -1)"),
    (("--recover-lr", "inf"), "--recover-lr must be between 1e-07 and 1 (got inf)"),
    (("--recover-batch", "0"), "--recover-batch must be between 1 and 256 (got 0)"),
    (("--low-memory",), "--recover trains adapters on the whole model, which an offloaded model cannot hold"),
    (("--device-map", "auto"), "--recover trains adapters on the whole model, which an offloaded model cannot hold"),
])
def test_bad_recovery_input_is_refused_in_one_line_before_the_model_loads(no_model_load, tiny_dir, text_files,
                                                                          capsys, flags, expected):
    assert run(prune_args(tiny_dir, text_files, "--recover", "lora", *flags)) == 2
    assert expected in only_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("flags, expected", [
    (("--recover-steps", "5"), "--recover-steps sets the recovery after pruning, and --recover is none"),
    (("--recover", "none", "--recover-rank", "4"), "--recover-rank sets the recovery after pruning"),
    (("--recover", "lora", "--recover-temperature", "3"), "--recover-temperature sets the distillation, which "
                                                          "--recover lora does not do"),
])
def test_a_recovery_flag_the_run_would_not_use_is_refused_not_dropped(no_model_load, tiny_dir, text_files, capsys,
                                                                     flags, expected):
    assert run(prune_args(tiny_dir, text_files, *flags)) == 2
    assert expected in only_error_line(capsys.readouterr().err)


def test_recovery_without_calibration_text_is_refused_before_the_model_loads(no_model_load, offline_hub, tiny_dir,
                                                                             text_files, monkeypatch, capsys):
    for variable in ("SPAP_DATA_DIR", "SPAP_CALIB_FILE"):
        monkeypatch.delenv(variable, raising=False)
    args = prune_args(tiny_dir, text_files, "--recover", "distill")
    at = args.index("--calib-file")
    del args[at:at + 2]
    assert run(args) == 2
    assert "has none (it would be sampled from the model itself)" in only_error_line(capsys.readouterr().err)


def test_the_run_api_refuses_a_recovery_on_an_offloaded_model_before_any_work(tiny_dir, text_files, monkeypatch):
    loaded = load_model(str(tiny_dir), device="cpu", placement=Placement("disk"))

    def no_work(*_args, **_kwargs):
        raise AssertionError("the run started its work")

    for step in ("calibration_windows", "run_experiment"):
        monkeypatch.setattr(execute, step, no_work)
    spec = RunSpec(settings=PruneSettings(method="magnitude", sparsity=0.25), nsamples=4, seqlen=32, seed=0,
                   eval_len=32, eval_windows=2, batch_size=4, inplace=True, recovery=RecoverySettings(mode="lora"))
    texts = RunTexts(calibration=text_from_file(text_files["calib"]), evaluation=text_from_file(text_files["eval"]))
    with pytest.raises(SpapInputError, match="offloaded model") as refusal:
        execute.run(loaded, spec, texts)
    assert "\n" not in str(refusal.value)
