"""An output folder never touches what the run reads: `--out` that is, holds or lies inside the
model, a text, a device map or the offload folder is refused before the model loads (exit 2, one
line, every file as it was), as is one that cannot be written, even with --overwrite."""

import shutil
from pathlib import Path

import pytest
from cli_helpers import prune_args

import spap_core.cli as cli
from spap_core.errors import SpapInputError
from spap_core.system.access import output_folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, by relative path."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture()
def run_folder(tmp_path, tiny_dir, text_files) -> Path:
    """DIR holding the model (DIR/tiny), both texts and a file of the user's own."""
    folder = tmp_path / "DIR"
    shutil.copytree(tiny_dir, folder / "tiny")
    for name in ("calib", "eval"):
        shutil.copy(text_files[name], folder / f"{name}.txt")
    (folder / "notes.txt").write_text("mine")
    return folder


def files_in(folder: Path) -> dict[str, Path]:
    return {"calib": folder / "calib.txt", "eval": folder / "eval.txt"}


@pytest.fixture()
def no_model_load(monkeypatch):
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model loaded before --out was checked"))


def refused(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("out, clash", [
    (".", "holds the model folder"),          # DIR itself: holds the model and both texts
    ("tiny", "is the model folder"),
    ("tiny/pruned", "lies inside the model folder"),
    ("calib.txt", "is the calibration text"),
])
def test_out_never_replaces_or_enters_an_input(run_folder, no_model_load, capsys, out, clash):
    before = snapshot(run_folder)
    target = (run_folder / out).resolve()
    line = refused(prune_args(run_folder / "tiny", files_in(run_folder), "--out", str(target), "--overwrite"), capsys)
    assert clash in line and "the run's inputs" in line
    assert snapshot(run_folder) == before
    assert not [p for p in run_folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder either


def test_out_apart_from_the_offload_folder_and_device_map(run_folder, no_model_load, tmp_path, capsys):
    offload = tmp_path / "offload"
    offload.mkdir()
    line = refused(prune_args(run_folder / "tiny", files_in(run_folder), "--device-map", "disk", "--offload-folder",
                              str(offload), "--out", str(offload / "out")), capsys)
    assert "lies inside the offload folder" in line
    device_map = tmp_path / "map.json"
    device_map.write_text('{"": "cpu"}')
    line = refused(prune_args(run_folder / "tiny", files_in(run_folder), "--device-map", str(device_map),
                              "--out", str(device_map), "--overwrite"), capsys)
    assert "is the device map" in line


def test_out_apart_from_the_default_texts(run_folder, no_model_load, monkeypatch, capsys):
    """Texts the run reads without being named (the default order) are inputs too."""
    monkeypatch.setenv("SPAP_CALIB_FILE", str(run_folder / "calib.txt"))
    argv = prune_args(run_folder / "tiny", files_in(run_folder))
    del argv[argv.index("--calib-file"):argv.index("--calib-file") + 2]
    assert "is the calibration text" in refused([*argv, "--out", str(run_folder / "calib.txt"), "--overwrite"], capsys)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_an_out_that_cannot_be_written_is_refused_before_the_work(run_folder, no_model_load, capsys):
    line = refused(prune_args(run_folder / "tiny", files_in(run_folder), "--out", "/proc/self/x"), capsys)
    assert "cannot be written" in line


def test_an_out_under_a_file_is_refused_before_the_work(run_folder, no_model_load, capsys):
    line = refused(prune_args(run_folder / "tiny", files_in(run_folder), "--out", str(run_folder / "notes.txt/x")),
                   capsys)
    assert "is not a folder" in line
    assert (run_folder / "notes.txt").read_text() == "mine"


def test_a_separate_out_is_written_and_nothing_else_changes(run_folder, tmp_path, capsys):
    before = snapshot(run_folder)
    out = tmp_path / "elsewhere" / "pruned"
    assert cli.main(prune_args(run_folder / "tiny", files_in(run_folder), "-K", "2", "--out", str(out))) == 0
    assert (out / "results.json").is_file() and any(out.glob("*.safetensors"))
    assert snapshot(run_folder) == before


def test_the_check_leaves_nothing_behind(tmp_path):
    folder = output_folder(tmp_path / "a" / "b", "output folder", {"text": tmp_path / "t.txt"})
    assert folder == tmp_path / "a" / "b" and list(tmp_path.iterdir()) == []
    with pytest.raises(SpapInputError, match="holds the text"):
        output_folder(tmp_path, "output folder", {"text": tmp_path / "t.txt"}, replace=True)


def test_a_symlinked_out_is_judged_by_where_it_leads(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "link").symlink_to(model)
    with pytest.raises(SpapInputError, match="is the model folder"):
        output_folder(tmp_path / "link", "output folder", {"model folder": model}, replace=True)


def test_the_app_never_writes_its_runs_inside_what_a_run_reads(tmp_path, monkeypatch):
    from spap_service.data import DataSpec, TextChoice
    from spap_service.runs import check_results_apart

    model = tmp_path / "model"
    model.mkdir()
    text = TextChoice(kind="file", path=str(tmp_path / "t.txt"))
    data = DataSpec(calibration=text, evaluation=text, nsamples=4, seqlen=32, eval_windows=2, eval_len=32,
                    batch_size=1)
    monkeypatch.setenv("SPAP_RESULTS_DIR", str(model / "runs"))
    with pytest.raises(SpapInputError, match="inside the model folder"):
        check_results_apart(str(model), data)
    monkeypatch.setenv("SPAP_RESULTS_DIR", str(tmp_path / "runs"))
    check_results_apart(str(model), data)  # beside the model: fine
