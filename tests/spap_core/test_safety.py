"""Serving safety and numerical faults: local paths confined to configured folders, and a run
that meets NaN stops with a message saying where, instead of returning a broken model."""

import os
from dataclasses import replace

import pytest
import torch

from spap_core.data.texts import text_from_file
from spap_core.errors import NumericalError, SpapInputError
from spap_core.methods.registry import PruneSettings
from spap_core.methods.spap import PenaltySettings, spap_layer
from spap_core.methods.toy import toy_problem
from spap_core.models.loading import load_model
from spap_core.pipeline.walk import prune_model
from spap_core.problem.objective import RefitSettings
from spap_core.system.access import ALLOWED_ROOTS_ENV
from spap_service.jobs import user_message


@pytest.fixture()
def confined_to(monkeypatch, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(allowed))
    return allowed


def test_texts_outside_the_allowed_folders_are_refused(confined_to, tmp_path):
    inside = confined_to / "calib.txt"
    inside.write_text("some words " * 50)
    outside = tmp_path / "secret.txt"
    outside.write_text("server secrets " * 50)
    assert "some words" in text_from_file(inside).text
    for path in (outside, confined_to / ".." / "secret.txt"):
        with pytest.raises(SpapInputError, match="outside the folders this server allows"):
            text_from_file(path)


def test_a_symlink_cannot_lead_out_of_the_allowed_folders(confined_to, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("server secrets " * 50)
    link = confined_to / "innocent.txt"
    os.symlink(outside, link)
    with pytest.raises(SpapInputError, match="outside the folders"):
        text_from_file(link)


def test_model_paths_outside_the_allowed_folders_are_refused(confined_to, tiny_dir, tmp_path):
    with pytest.raises(SpapInputError, match="outside the folders"):
        load_model(str(tiny_dir))
    with pytest.raises(SpapInputError, match="outside the folders"):
        load_model(str(tmp_path / "model.gguf"))


def test_without_the_setting_every_path_is_allowed(monkeypatch, tmp_path):
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    text = tmp_path / "t.txt"
    text.write_text("plain words " * 50)
    assert "plain words" in text_from_file(text).text


def test_nan_in_the_solver_stops_with_layer_and_iteration():
    problem = toy_problem(width=16, outputs=4, tokens=100, n_prune=4, seed=0)
    problem.cross[0, 3] = float("nan")
    with pytest.raises(NumericalError, match=r"layer 5, ρ iteration 1") as caught:
        spap_layer(problem, PenaltySettings(), RefitSettings(), layer=5)
    assert user_message(caught.value) == str(caught.value)  # shown verbatim in the app


def test_nan_activations_stop_the_run_naming_the_layer(tiny):
    calibration = torch.randint(0, 200, (2, 16))
    layer = tiny.family.decoder_layers(tiny.model)[1]
    handle = layer.mlp.up_proj.register_forward_hook(lambda _m, _a, out: out * float("nan"))
    try:
        with pytest.raises(NumericalError, match="activations of layer 1 contain NaN"):
            prune_model(tiny, calibration, PruneSettings(sparsity=0.25))
    finally:
        handle.remove()


def test_a_model_folder_whose_files_link_outside_is_refused(confined_to, tmp_path, tiny_dir):
    """The folder lies inside the allowed root, but one of its files is a link to a file outside:
    every file the loaders would open is checked, not only the folder."""
    import shutil

    model = confined_to / "model"
    shutil.copytree(tiny_dir, model)
    secret = tmp_path / "hostname"
    secret.write_text("server-secret")
    (model / "chat_template.jinja").symlink_to(secret)
    with pytest.raises(SpapInputError, match="holds chat_template.jinja, which leads outside"):
        load_model(str(model))
    (model / "chat_template.jinja").unlink()
    assert load_model(str(model)).family.model_type == "llama"  # the same folder without the link loads


@pytest.mark.parametrize("what", ["model", "text"])
def test_a_path_too_long_for_the_os_is_a_message(tmp_path, what):
    path = str(tmp_path / ("a" * 300))
    with pytest.raises(SpapInputError, match="path is too long"):
        load_model(path) if what == "model" else text_from_file(path)


def test_a_path_too_long_never_locks_the_app(app_files, tmp_path):
    from app_harness import click, open_page, start_app

    at = start_app()
    open_page(at, "model_data")
    at.radio(key="model_kind").set_value("Local directory or .gguf file").run()
    at.text_input(key="model_path").set_value(str(tmp_path / ("a" * 300)))
    click(at, "Load model")
    assert not at.exception
    assert any("path is too long" in e.value for e in at.error)
    at.switch_page("pages/how_spap_works.py").run()  # every other page still draws
    assert not at.exception and at.title[0].value == "How SPAP works"


def test_a_public_demo_has_limits_it_states_and_enforces(monkeypatch, tmp_path):
    from spap_service.limits import server_limits

    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    # without roots only the queue's cap applies, which every server has
    assert server_limits().describe() == "This server allows at most 100 jobs waiting in its queue at once."
    assert server_limits().share_runs
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(tmp_path))
    limits = server_limits()
    assert limits.public_demo and not limits.share_runs
    assert "16,384 calibration tokens per run" in limits.describe() and "2 queued or running jobs" in limits.describe()
    assert "64 jobs waiting in its queue" in limits.describe()
    limits.check(32, 512, 32, 512)  # the issue protocol fits
    with pytest.raises(SpapInputError, match="more than this server allows"):
        limits.check(1024, 8192, 8, 256)  # what a shared link could pre-fill
    with pytest.raises(SpapInputError, match="whole evaluation text"):
        limits.check(8, 256, 0, 256)
    monkeypatch.setenv("SPAP_MAX_CALIBRATION_TOKENS", "0")  # 0 lifts a limit
    server_limits().check(1024, 8192, 8, 256)


def test_the_app_refuses_a_run_over_the_limit_and_a_job_over_the_session_cap(app_files, monkeypatch):
    import threading

    from app_harness import JOB_HANG_GUARD_S, click, open_page, session_job, start_app

    import spap_core.methods.spap as spap_module
    from spap_service.jobs import shared_queue

    monkeypatch.setenv("SPAP_MAX_CALIBRATION_TOKENS", "1000")
    monkeypatch.setenv("SPAP_MAX_JOBS_PER_SESSION", "1")
    at = start_app()
    open_page(at, "run_spap")
    assert any("at most 1,000 calibration tokens per run" in c.value for c in at.caption)  # stated on screen
    click(at, "Run SPAP")  # 8 × 256 = 2,048 tokens
    assert any("more than this server allows" in e.value for e in at.error) and "run" not in at.session_state["jobs"]

    at.number_input(key="seqlen").set_value(64)  # 8 × 64 = 512 tokens: allowed
    release, original = threading.Event(), spap_module.spap_layer
    monkeypatch.setattr(spap_module, "spap_layer",
                        lambda *a, **k: (release.wait(JOB_HANG_GUARD_S), original(*a, **k))[1])
    try:
        click(at, "Run SPAP")
        running = session_job(at, "run")
        open_page(at, "perplexity_sweep")
        click(at, "Run sweep")
        assert any("at most 1 job per browser session" in w.value for w in at.warning)
        assert "sweep" not in at.session_state["jobs"]
    finally:
        release.set()
        shared_queue().wait(running, JOB_HANG_GUARD_S)


def test_a_run_that_cannot_fit_in_free_memory_is_refused_before_any_work(tiny, monkeypatch):
    import spap_core.pipeline.budget as budget
    from spap_core.pipeline.experiment import plan_run

    settings = PruneSettings()
    needed = budget.run_bytes(tiny, 8 * 64, 4, 64, explicit_targets=True, copies_model=True)
    monkeypatch.setattr(budget, "free_bytes", lambda device: needed * 10)
    plan_run(tiny, settings, (64, 64), calibration_tokens=8 * 64)  # fits
    monkeypatch.setattr(budget, "free_bytes", lambda device: needed)  # fits only without headroom: refused
    with pytest.raises(SpapInputError, match=r"needs about .* GiB .* free: use fewer samples"):
        plan_run(tiny, settings, (64, 64), calibration_tokens=8 * 64)
    # what a shared link could ask of a real machine: 1024 × 8192 tokens of the tiny model alone
    assert budget.run_bytes(tiny, 1024 * 8192, 4, 256, True, False) > 8 * 2**30


def test_a_fisher_allocation_counts_its_backward_pass_in_the_memory_check(tiny, monkeypatch):
    import spap_core.pipeline.budget as budget
    from spap_core.pipeline.experiment import plan_run

    walk = budget.run_bytes(tiny, 8 * 64, 4, 64, explicit_targets=True, copies_model=True)
    with_backward = budget.run_bytes(tiny, 8 * 64, 4, 64, explicit_targets=True, copies_model=True, backward_window=64)
    assert with_backward > 1.1 * walk
    monkeypatch.setattr(budget, "free_bytes", lambda device: 1.3 * walk)  # the walk fits with its headroom
    plan_run(tiny, PruneSettings(), (64, 64), calibration_tokens=8 * 64)
    with pytest.raises(SpapInputError, match="needs about"):
        plan_run(tiny, PruneSettings(allocation="fisher"), (64, 64), calibration_tokens=8 * 64)


def test_a_method_that_backpropagates_counts_its_backward_pass_and_the_layers_gradients(tiny, monkeypatch):
    import spap_core.pipeline.budget as budget
    from spap_core.pipeline.experiment import plan_run

    backward = budget.run_bytes(tiny, 8 * 64, 4, 64, explicit_targets=False, copies_model=True, backward_window=64)
    with_gradients = budget.run_bytes(tiny, 8 * 64, 4, 64, explicit_targets=False, copies_model=True,
                                      backward_window=64, weight_gradients=True)
    layer_weights = sum(p.numel() for layer in tiny.model.model.layers for p in layer.parameters())
    assert with_gradients - backward == 2 * 4 * layer_weights  # summed and one window's, in float32
    monkeypatch.setattr(budget, "free_bytes", lambda device: 1.01 * backward / budget.FREE_SHARE)
    plan_run(tiny, PruneSettings(method="magnitude"), (64, 64), calibration_tokens=8 * 64)  # no backward: fits
    with pytest.raises(SpapInputError, match="needs about"):  # its backward pass fits, its gradients do not
        plan_run(tiny, PruneSettings(method="taylor"), (64, 64), calibration_tokens=8 * 64)


def test_a_recovery_that_cannot_fit_is_refused_before_any_work(tiny, monkeypatch):
    import spap_core.pipeline.budget as budget
    from spap_core.pipeline.experiment import plan_run
    from spap_core.recovery.settings import RecoverySettings

    lora = RecoverySettings(mode="lora", steps=10, batch=4)
    one_step = budget.recovery_bytes(tiny, lora, windows=8, seqlen=64, copies_model=True)
    assert budget.recovery_bytes(tiny, replace(lora, batch=8), 8, 64, copies_model=True) > one_step
    # a batch wider than the calibration backpropagates every window once, no more
    assert budget.recovery_bytes(tiny, replace(lora, batch=64), 8, 64, True) \
        == budget.recovery_bytes(tiny, replace(lora, batch=8), 8, 64, True)
    assert budget.recovery_bytes(tiny, replace(lora, mode="distill"), 8, 64, True) > one_step  # the teacher's logits
    assert budget.recovery_bytes(tiny, replace(lora, rank=64), 8, 64, True) > one_step  # larger adapters
    walk = budget.run_bytes(tiny, 8 * 64, 4, 64, explicit_targets=False, copies_model=True)
    monkeypatch.setattr(budget, "free_bytes", lambda device: 1.01 * max(walk, one_step) / budget.FREE_SHARE)
    plan_run(tiny, PruneSettings(method="flap"), (64, 64), calibration_tokens=8 * 64, recovery=lora)
    with pytest.raises(SpapInputError, match="recovery after pruning needs about .*--recover-batch"):
        plan_run(tiny, PruneSettings(method="flap"), (64, 64), calibration_tokens=8 * 64,
                 recovery=replace(lora, batch=8))


# Every path flag of the CLI, and how to point it at `path`.
PATH_FLAG_ARGUMENTS = {
    "--model": lambda path: ["--model", path],
    "--calib-file": lambda path: ["--calib-file", path],
    "--eval-file": lambda path: ["--eval-file", path],
    "--device-map": lambda path: ["--device-map", path],
    "--offload-folder": lambda path: ["--device-map", "disk", "--offload-folder", path],
    "--zeroshot-tasks-dir": lambda path: ["--zeroshot", "mytask", "--zeroshot-tasks-dir", path],
    "--out": lambda path: ["--out", path],
    "latency --model": lambda path: ["--model", path],
    "latency --pruned": lambda path: ["--pruned", path],
}


@pytest.mark.parametrize("flag", list(PATH_FLAG_ARGUMENTS))
def test_every_path_the_cli_reads_is_confined_before_anything_is_read(confined_to, tmp_path, tiny_dir, flag,
                                                                     monkeypatch, capsys):
    """Outside the allowed roots, an existing path (with content) and a missing one get the same
    one-line refusal, and nothing outside is opened: the message never tells what exists there."""
    import builtins
    import io
    import shutil

    import spap_core.cli as cli

    model = confined_to / "model"
    shutil.copytree(tiny_dir, model)
    (confined_to / "calib.txt").write_text("w1 w2 " * 3000)
    outside = tmp_path / "outside"
    outside.mkdir()
    existing = outside / ("map.json" if flag == "--device-map" else "thing.txt")
    existing.write_text('{"": "cpu"}')
    if flag.endswith(("--model", "--pruned", "--offload-folder", "--zeroshot-tasks-dir")):
        existing = outside / "folder"
        shutil.copytree(tiny_dir, existing)
    missing = outside / existing.name.replace("thing", "nothing").replace("folder", "no-folder").replace("map", "nomap")
    opened = []
    for module in (builtins, io):
        real_open = module.open
        monkeypatch.setattr(module, "open", lambda file, *a, _real=real_open, **k: (opened.append(str(file)),
                                                                                    _real(file, *a, **k))[1])
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    command = ["latency", "--model", str(model)] if flag.startswith("latency") else [
        "prune", "--model", str(model), "--calib-file", str(confined_to / "calib.txt"),
        "--eval-file", str(confined_to / "calib.txt")]
    lines = []
    for path in (existing, missing):
        assert cli.main([*command, *PATH_FLAG_ARGUMENTS[flag](str(path))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "outside the folders this server allows" in err[0], err
        lines.append(err[0].replace(str(path), "PATH"))
    assert lines[0] == lines[1]
    assert not [name for name in opened if name.startswith(str(outside))]
