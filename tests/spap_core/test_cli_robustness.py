"""Hostile or careless use of the CLI: every help renders, bad numbers (past the one declared
range) and impossible paths are refused in one line before the model loads, --out is written whole
or not at all (never mixed with an old save), a failed save still reports the result (exit 3), and
Ctrl-C, SIGTERM and SIGHUP end in one line (exit 130, 143, 129) with no staging folder left."""

import argparse
import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import last_json_line, prune_args, run
from conftest import REPO
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel

import spap_core.cli as cli
import spap_core.runner.execute as execute
from spap_core.cli import main
from spap_core.models.loading import load_model
from spap_core.storage.runs import staged_directory

LONG_NAME = "x" * 300  # over the 255 characters a file name may have
OLD_SAVE = {"model-00001-of-00002.safetensors": "old shard", "model.safetensors.index.json": "{}", "notes.txt": "mine"}


def fast_prune(model, files, *extra):
    return prune_args(model, files, "-K", "2", *extra)


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def only_error_line(err: str) -> str:
    """Refusals before the model loads print nothing else: exactly one `error:` line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def write_old_save(folder: Path) -> None:
    folder.mkdir()
    for name, text in OLD_SAVE.items():
        (folder / name).write_text(text)


def assert_old_save_intact(folder: Path) -> None:
    assert {p.name: p.read_text() for p in folder.iterdir()} == OLD_SAVE


def assert_nothing_left_beside(folder: Path, expected: set[str]) -> None:
    """No temporary (hidden) folder and no partial output next to `folder`."""
    assert {p.name for p in folder.parent.iterdir()} == expected


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail if the model loads: these refusals must come before the slow load."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(cli, "load_model", refuse)


@pytest.mark.parametrize("flag, value, expected", [
    ("--batch-size", "0", "--batch-size must be between 1 and 256 (got 0)"),
    ("--nsamples", "-5", "--nsamples must be between 1 and 1024 (got -5)"),
    ("--seqlen", "-1", "--seqlen must be between 8 and 8192 (got -1)"),
    ("--eval-len", "1", "--eval-len must be between 8 and 8192 (got 1)"),
    ("--eval-windows", "-1", "--eval-windows must be between 0 and 100000 (got -1)"),
    ("--seed", str(2**64), "--seed must be between 0 and 2147483647"),
    ("--sparsity", "0", "--sparsity must be between 0.05 and 0.95 (got 0)"),
    ("--sparsity", "nan", "--sparsity must be between 0.05 and 0.95 (got nan)"),
    ("-K", "10000", "--iterations (-K) must be between 1 and 60 (got 10000)"),
    ("--rho0", "inf", "--rho0 must be between 1e-06 and 1000 (got inf)"),
])
def test_prune_numbers_are_checked_before_the_model_loads(no_model_load, tiny_dir, text_files, capsys, flag, value,
                                                          expected):
    assert run(fast_prune(tiny_dir, text_files, flag, value)) == 2
    assert expected in only_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("flag, value", [("--repeats", "0"), ("--warmup", "-1"), ("--seqlen", "1"),
                                         ("--decode-tokens", "0")])
def test_latency_numbers_are_checked_before_the_model_loads(no_model_load, tiny_dir, capsys, flag, value):
    assert run(["latency", "--model", str(tiny_dir), flag, value, "--json"]) == 2
    assert f"{flag} must be between" in only_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command, flag", [("prune", "--model"), ("prune", "--calib-file"), ("prune", "--eval-file"),
                                           ("prune", "--out"), ("latency", "--model"), ("latency", "--pruned")])
def test_a_path_over_the_os_limit_is_one_line(no_model_load, tiny_dir, text_files, tmp_path, capsys, command, flag):
    path = str(tmp_path / LONG_NAME)
    argv = fast_prune(tiny_dir, text_files) if command == "prune" else ["latency", "--model", str(tiny_dir)]
    assert run([*argv, flag, path]) == 2
    line = only_error_line(capsys.readouterr().err)
    assert path[:80] in line and LONG_NAME not in line


def test_an_os_error_on_a_path_is_one_line(monkeypatch, tiny_dir, text_files, capsys):
    denied = "/secret/" + LONG_NAME
    def deny(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", denied)
    monkeypatch.setattr(cli, "load_model", deny)
    assert run(fast_prune(tiny_dir, text_files)) == 2
    assert only_error_line(capsys.readouterr().err) == f"error: Permission denied: {denied[:80]}"


def test_out_refuses_a_non_empty_folder_before_the_model_loads(no_model_load, tiny_dir, text_files, tmp_path, capsys):
    out = tmp_path / "pruned"
    write_old_save(out)
    assert run(fast_prune(tiny_dir, text_files, "--out", str(out))) == 2
    assert "--overwrite" in only_error_line(capsys.readouterr().err)
    assert_old_save_intact(out)


@pytest.mark.parametrize("out", [".", "", "file.txt"])
def test_out_refuses_the_current_folder_and_files(no_model_load, tiny_dir, text_files, tmp_path, monkeypatch, capsys,
                                                  out):
    monkeypatch.chdir(tmp_path)
    Path("file.txt").write_text("keep me")
    assert run(fast_prune(tiny_dir, text_files, "--out", out, "--overwrite")) == 2
    only_error_line(capsys.readouterr().err)
    assert Path("file.txt").read_text() == "keep me"


def test_out_accepts_an_empty_folder(tiny_dir, text_files, tmp_path, capsys):
    out = tmp_path / "pruned"
    out.mkdir()
    assert run(fast_prune(tiny_dir, text_files, "--out", str(out))) == 0
    assert json.loads((out / "results.json").read_text())["ppl"] == last_json_line(capsys.readouterr().out)["ppl"]


def test_overwrite_replaces_the_old_folder_only_once_the_new_one_is_complete(tiny_dir, text_files, tmp_path,
                                                                             monkeypatch, capsys):
    out = tmp_path / "pruned"
    write_old_save(out)
    staged = []

    def write_run_while_old_is_intact(directory, record, result):
        assert_old_save_intact(out)  # the old save is untouched while the new one is written
        staged.append(Path(directory))
        return cli_write_run(directory, record, result)

    cli_write_run = execute.write_run
    monkeypatch.setattr(execute, "write_run", write_run_while_old_is_intact)
    assert run(fast_prune(tiny_dir, text_files, "--out", str(out), "--overwrite")) == 0
    result = last_json_line(capsys.readouterr().out)
    assert staged[0].parent == out.parent and staged[0].name.startswith(".pruned")
    names = {p.name for p in out.iterdir()}
    assert not names & OLD_SAVE.keys() and {"model.safetensors", "results.json", "trace.csv"} <= names
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == result["params_after"]
    assert_nothing_left_beside(out, {"pruned"})


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     SafetensorError("Error while serializing: No space left on device")])
@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_save_still_reports_the_result_and_exits_3(tiny_dir, text_files, tmp_path, monkeypatch, capsys,
                                                            failure, existing):
    def full_disk(self, directory, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"half a file")
        raise failure

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    out = tmp_path / "pruned"
    if existing:
        write_old_save(out)
    assert run(fast_prune(tiny_dir, text_files, "--out", str(out), "--overwrite")) == 3
    captured = capsys.readouterr()
    result = last_json_line(captured.out)
    assert result["ppl"] > 1 and "No space left on device" in result["save_error"]
    [line] = error_lines(captured.err)
    assert line.startswith(f"error: could not save the pruned model in '{out}'")
    if existing:
        assert_old_save_intact(out)
    assert_nothing_left_beside(out, {"pruned"} if existing else set())


def test_ctrl_c_while_pruning_is_one_line_and_exit_130(tiny_dir, text_files, tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("spap_core.pipeline.experiment.prune_model", interrupt)
    out = tmp_path / "pruned"
    assert run(fast_prune(tiny_dir, text_files, "--out", str(out))) == 130
    err = capsys.readouterr().err
    assert not error_lines(err) and err.strip().splitlines()[-1].startswith("interrupted: ")
    assert [line for line in err.splitlines() if line.startswith("interrupted")] == [err.strip().splitlines()[-1]]
    assert_nothing_left_beside(out, set())


@pytest.mark.parametrize("step", ["save_pruned", "write_run"])
@pytest.mark.parametrize("existing", [False, True])
def test_ctrl_c_while_saving_leaves_no_partial_folder(tiny_dir, text_files, tmp_path, monkeypatch, capsys, step,
                                                      existing):
    real = getattr(execute, step)

    def write_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(execute, step, write_then_interrupt)
    out = tmp_path / "pruned"
    if existing:
        write_old_save(out)
    assert run(fast_prune(tiny_dir, text_files, "--out", str(out), "--overwrite")) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted: ")
    if existing:
        assert_old_save_intact(out)
    assert_nothing_left_beside(out, {"pruned"} if existing else set())


def test_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "pruned"
    write_old_save(out)
    real_rename = os.rename

    def refuse_the_new_folder(source, target):
        if Path(source).name.startswith(".pruned.") and "old-" not in Path(source).name:
            raise KeyboardInterrupt
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", refuse_the_new_folder)
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(out, replace=True) as staging:
            (staging / "config.json").write_text("{}")
    assert_old_save_intact(out)
    assert_nothing_left_beside(out, {"pruned"})


# ------------------------------------------------------------------ help, bounds and stop signals


def subcommands() -> list[str]:
    action = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


@pytest.mark.parametrize("command", [[], *([name] for name in ["compare", "prune", "latency"])])
def test_every_help_renders(command, capsys):
    assert sorted(subcommands()) == ["compare", "latency", "prune"]  # a new subcommand joins the list above
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m spap_core") and "exit codes" in out


def test_a_help_line_with_a_percent_sign_is_shown_as_written():
    from spap_core.methods.allocation import DESCRIPTIONS, FisherAllocation

    action = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    shown = " ".join(action.choices["prune"].format_help().split())
    assert "%" in DESCRIPTIONS[FisherAllocation.name] and " ".join(DESCRIPTIONS[FisherAllocation.name].split()) in shown


def numeric_flags(command: str):
    return [p for p in cli.COMMAND_PARAMETERS[command] if p.kind in (int, float)]


@pytest.mark.parametrize("command", ["prune", "latency"])
def test_every_numeric_flag_takes_its_declared_bounds_and_refuses_past_them(no_model_load, tiny_dir, command,
                                                                           capsys):
    """The same range as the form and the share link (tests/pages/test_app.py checks those), from the
    one declaration: both ends accepted, one step past either end refused in one line."""
    for declared in numeric_flags(command):
        base = ["latency", "--model", str(tiny_dir)] if command == "latency" else [
            "prune", "--model", str(tiny_dir), "--method", declared.method or "spap",
            "--allocation", declared.allocation or "uniform",
            *(["--recover", "lora+distill"] if declared.group == "recovery" else [])]  # where each acts
        step = 1 if declared.kind is int else declared.step
        for value in (declared.low, declared.high):
            cli.check_args(cli.build_parser().parse_args([*base, f"{declared.flags[0]}={value!r}"]))
        for value in (declared.low - step, declared.high + step):
            assert run([*base, f"{declared.flags[0]}={value!r}"]) == 2, declared.key
            line = only_error_line(capsys.readouterr().err)
            assert f"{declared.flag_name} must be between {declared.bounds_text}" in line


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_while_saving_is_one_line_its_exit_code_and_no_staging_folder(
        tiny_dir, text_files, tmp_path, monkeypatch, capsys, signum):
    out = tmp_path / "pruned"
    real = execute.save_pruned
    seen = []

    def save_then_signal(model, tokenizer, staging):
        real(model, tokenizer, staging)
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        os.kill(os.getpid(), signum)  # handled at once, in this (the main) thread
        raise AssertionError("the signal did not stop the save")

    monkeypatch.setattr(execute, "save_pruned", save_then_signal)
    before = signal.signal(signum, signal.SIG_DFL)  # as in a terminal, also when the tests run under nohup
    try:
        code = run(fast_prune(tiny_dir, text_files, "--out", str(out)))
        restored = signal.getsignal(signum)
    finally:
        signal.signal(signum, before)
    assert code == 128 + signum
    assert seen and seen[0][0].startswith(".pruned.")  # the staging folder existed when the signal came
    err = capsys.readouterr().err
    assert "Traceback" not in err and not error_lines(err)
    assert err.strip().splitlines()[-1] == (f"interrupted: stopped by {signal.Signals(signum).name} before the end; "
                                            "no output folder was written.")
    assert_nothing_left_beside(out, set())
    assert restored is signal.SIG_DFL  # the handler is removed again


def test_a_signal_ignored_at_the_start_stays_ignored(tiny_dir, text_files, tmp_path):
    """Under nohup SIGHUP is ignored: a run started so is not stopped by a closed terminal."""
    out = tmp_path / "pruned"
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with cli.signals_as_interrupts():
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert run(fast_prune(tiny_dir, text_files, "--out", str(out))) == 0
    finally:
        signal.signal(signal.SIGHUP, before)
    assert (out / "results.json").is_file()


def test_sigterm_stops_the_real_command_and_removes_its_staging_folder(tiny_dir, text_files, tmp_path):
    """The same through `python -m spap_core`, as `kill` sends it: the save is slowed down so the
    signal arrives while the staging folder exists."""
    out = tmp_path / "pruned"
    script = tmp_path / "slow_save.py"
    script.write_text(
        "import sys, time\n"
        "import spap_core.cli as cli\n"
        "import spap_core.runner.execute as execute\n"
        "real = execute.save_pruned\n"
        "def slow(*args, **kwargs):\n"
        "    real(*args, **kwargs)\n"
        "    time.sleep(120)\n"
        "execute.save_pruned = slow\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    process = subprocess.Popen([sys.executable, str(script), *fast_prune(tiny_dir, text_files, "--out", str(out))],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any((p / "config.json").is_file() for p in tmp_path.glob(".pruned.*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted: stopped by SIGTERM")
    assert_nothing_left_beside(out, {"slow_save.py"})


# ------------------------------------------------------------------ a model folder that lies


def lying_copy(tiny_dir: Path, folder: Path, **changes) -> str:
    """The tiny model folder copied with `changes` in its config.json."""
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return str(folder)


@pytest.fixture()
def transformers_log():
    """What transformers logs, as its own handler would print it: under pytest that handler writes
    to a stream no capture fixture sees, so a handler of the test's own stands beside it."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    yield text
    library_logger.removeHandler(handler)


@pytest.mark.parametrize("changes, expected", [
    ({"num_hidden_layers": 1_000_000}, "lying says 1000000 layers (num_hidden_layers) but its weights hold 2"),
    ({"num_hidden_layers": 1}, "lying says 1 layer but its weights hold 2"),
    ({"intermediate_size": 256}, ("model.layers.0.mlp.gate_proj.weight is [128, 64] in the weights but [256, 64] "
                                  "by the config")),
    ({"model_type": "foo", "auto_map": {"AutoConfig": "configuration_foo.FooConfig",
                                        "AutoModelForCausalLM": "modeling_foo.FooForCausalLM"}},
     "needs custom code (its config names auto_map and model_type 'foo'), which this tool never runs"),
], ids=["a million layers", "fewer layers", "a wider MLP", "custom code"])
def test_a_config_that_does_not_describe_its_weights_is_one_line_and_exit_2(tiny_dir, tmp_path, capfd, transformers_log,
                                                                            changes, expected):
    """Nothing else is printed (transformers' load report, its advice to trust remote code, its
    warnings): nothing of the model is loaded."""
    folder = lying_copy(tiny_dir, tmp_path / "lying", **changes)
    assert run(["latency", "--model", folder, "--json"]) == 2
    line = only_error_line(capfd.readouterr().err)
    assert expected in line and "trust_remote_code" not in line
    assert transformers_log.getvalue() == ""


def test_a_load_transformers_refuses_shows_its_refusal_without_its_load_report(tiny_dir, tmp_path, monkeypatch,
                                                                               capfd, transformers_log):
    """Where transformers finds a mismatch the checks before it did not (they are skipped here),
    its table of keys stays held back: the refusal is one error line."""
    from spap_core.models import loading as models

    monkeypatch.setattr(models, "checked_skeleton", lambda *args: None)
    folder = lying_copy(tiny_dir, tmp_path / "lying", intermediate_size=256)
    assert run(["latency", "--model", folder, "--json"]) == 2
    [line] = error_lines(capfd.readouterr().err)
    assert line.startswith(f"error: Could not load a causal LM from {folder}")
    assert "LOAD REPORT" not in transformers_log.getvalue()


def test_a_load_that_succeeds_still_shows_what_transformers_logged(tiny_dir, tmp_path, transformers_log):
    """A tensor the model has no place for (beside every weight it needs) is left out by transformers,
    which says so in its load report: shown once the model has loaded."""
    folder = tmp_path / "extra"
    shutil.copytree(tiny_dir, folder)
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, "model.extra.weight": torch.zeros(2)}, folder / "model.safetensors",
              metadata={"format": "pt"})
    load_model(str(folder))
    assert "LOAD REPORT" in transformers_log.getvalue() and "model.extra.weight" in transformers_log.getvalue()
