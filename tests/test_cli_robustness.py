"""Hostile or careless use of the CLI: bad numbers and impossible paths are refused in one line
before the model loads, --out is written whole or not at all (never mixed with an old save), a
failed save still reports the result (exit 3), and Ctrl-C ends in one line (exit 130)."""

import errno
import json
import os
from pathlib import Path

import pytest
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, PreTrainedModel

import spap_core.cli as cli
from spap_core.cli import main
from spap_core.runs import staged_directory
from test_cli import last_json_line, prune_args

LONG_NAME = "x" * 300  # over the 255 characters a file name may have
OLD_SAVE = {"model-00001-of-00002.safetensors": "old shard", "model.safetensors.index.json": "{}", "notes.txt": "mine"}


def fast_prune(model, files, *extra):
    return prune_args(model, files, "-K", "2", *extra)


def run(argv: list[str]) -> int:
    """main(argv), failing the test (instead of stopping pytest) if Ctrl-C escapes it."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main")


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
    ("--batch-size", "0", "--batch-size must be at least 1 (got 0)"),
    ("--nsamples", "-5", "--nsamples must be at least 1 (got -5)"),
    ("--seqlen", "-1", "--seqlen must be at least 8 (got -1)"),
    ("--eval-len", "1", "--eval-len must be at least 8 (got 1)"),
    ("--eval-windows", "-1", "--eval-windows must be at least 0 (got -1)"),
    ("--seed", str(2**64), "--seed must be between 0 and 2147483647"),
    ("--sparsity", "0", "Sparsity must be a number strictly between 0 and 1"),
    ("--sparsity", "nan", "Sparsity must be a number strictly between 0 and 1"),
])
def test_prune_numbers_are_checked_before_the_model_loads(no_model_load, tiny_dir, text_files, capsys, flag, value,
                                                          expected):
    assert run(fast_prune(tiny_dir, text_files, flag, value)) == 2
    assert expected in only_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("flag, value", [("--repeats", "0"), ("--warmup", "-1"), ("--seqlen", "1"),
                                         ("--decode-tokens", "0")])
def test_latency_numbers_are_checked_before_the_model_loads(no_model_load, tiny_dir, capsys, flag, value):
    assert run(["latency", "--model", str(tiny_dir), flag, value, "--json"]) == 2
    assert f"{flag} must be at least" in only_error_line(capsys.readouterr().err)


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

    cli_write_run = cli.write_run
    monkeypatch.setattr(cli, "write_run", write_run_while_old_is_intact)
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

    monkeypatch.setattr("spap_core.experiment.prune_model", interrupt)
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
    real = getattr(cli, step)

    def write_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, step, write_then_interrupt)
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
