"""Saved runs stay bounded and cheap to list: the list comes from an index that re-reads only
changed records and weights, caps on count, disk and per-session share remove a session's oldest runs
first (never the one just saved, never a folder the app did not save), past the disk cap the oldest
runs' pruned weights go before any whole run, and run names carry 64 random bits."""

import json
import os
import re
import threading

import pytest

import spap_service.run_index as run_index
from spap_core.storage.runs import RESULTS_DIR_ENV, new_run_directory
from spap_core.storage.weights import WEIGHTS_FILE
from spap_service.run_index import WEIGHTS_RECORD_KEY, RunCaps, enforce_caps, folder_bytes, indexed_runs

RECORD = {"method": "spap", "sparsity": 0.3, "ppl": 20.0, "ppl_dense": 18.0, "params_before": 10, "params_after": 8,
          "calibration_tokens": 64, "eval_tokens": 62, "eval_windows": 2, "eval_len": 32, "settings": {},
          "timings": {}}


def save(root, name: str, owner: str | None, finished_at: float, padding: int = 0, weights: int = 0):
    """A run folder as the app writes it, with `weights` bytes of pruned weights when not 0."""
    folder = root / name
    folder.mkdir(parents=True)
    record = {**RECORD, "finished_at": finished_at, **({"owner": owner} if owner else {})}
    (folder / "trace_masks.npz").write_bytes(b"0" * padding)
    if weights:
        (folder / WEIGHTS_FILE).write_bytes(b"0" * weights)
        record[WEIGHTS_RECORD_KEY] = {"file": WEIGHTS_FILE, "bytes": weights}
    (folder / "results.json").write_text(json.dumps(record))
    return folder


@pytest.fixture()
def reads(monkeypatch):
    """How many records the index read."""
    counted = []
    real = run_index.read_record
    monkeypatch.setattr(run_index, "read_record", lambda folder: (counted.append(folder.name), real(folder))[1])
    return counted


def names(root) -> list[str]:
    return [run.name for run in indexed_runs(root)[0]]


def test_the_list_reads_a_record_only_when_it_is_new_or_changed(tmp_path, reads):
    for index in range(5):
        save(tmp_path, f"run{index}", "a", finished_at=index)
    assert names(tmp_path) == ["run4", "run3", "run2", "run1", "run0"] and len(reads) == 5
    reads.clear()
    assert names(tmp_path) == ["run4", "run3", "run2", "run1", "run0"] and reads == []  # from the index alone
    (tmp_path / "run2" / "results.json").write_text('{"method": "spap", "ppl": NaN')  # damaged since
    os.utime(tmp_path / "run2" / "results.json", ns=(1, 1))
    runs, unreadable = indexed_runs(tmp_path)
    assert reads == ["run2"] and [run.name for run in runs] == ["run4", "run3", "run1", "run0"]
    assert len(unreadable) == 1 and unreadable[0].file.parent.name == "run2"
    (tmp_path / "run4" / "results.json").unlink()  # a folder that lost its record is no run
    assert "run4" not in names(tmp_path)


def test_an_index_that_summarised_other_fields_reads_the_records_again(tmp_path, reads):
    """An index written when the summary held fewer fields (before the interval and seeds) would list
    every run without them, as if saved without an interval: its entries are read again."""
    folder = save(tmp_path, "run0", "a", finished_at=0)
    record = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps({**record, "ppl_ci95": [19.0, 21.0]}))
    indexed_runs(tmp_path)
    index_file = tmp_path / run_index.INDEX_FILE
    stored = json.loads(index_file.read_text())
    del stored["run0"]["summary"]["ppl_ci95"]
    index_file.write_text(json.dumps(stored))
    reads.clear()
    (run,) = indexed_runs(tmp_path)[0]
    assert reads == ["run0"] and run.summary["ppl_ci95"] == [19.0, 21.0]


def test_a_damaged_index_is_rebuilt_from_the_folder(tmp_path):
    save(tmp_path, "run0", "a", finished_at=0)
    names(tmp_path)
    (tmp_path / run_index.INDEX_FILE).write_text("{ not json")
    assert names(tmp_path) == ["run0"]


def test_a_session_past_its_share_loses_its_own_oldest_runs(tmp_path):
    for index in range(3):
        save(tmp_path, f"a{index}", "a", finished_at=index)
    save(tmp_path, "b0", "b", finished_at=0.5)
    save(tmp_path, "a3", "a", finished_at=10)
    removed = enforce_caps(tmp_path, RunCaps(max_count=None, max_bytes=None, per_session=2), saved="a3")
    assert removed == ["a0", "a1"] and names(tmp_path) == ["a3", "a2", "b0"]


def test_past_the_servers_caps_the_session_holding_most_loses_its_oldest_first(tmp_path):
    for index in range(3):
        save(tmp_path, f"heavy{index}", "heavy", finished_at=10 + index, padding=1000)
    save(tmp_path, "light0", "light", finished_at=1, padding=1000)  # older, but its session holds one run
    save(tmp_path, "cli-run", None, finished_at=0, padding=1000)  # not the app's: never removed
    save(tmp_path, "new0", "new", finished_at=20, padding=1000)
    assert enforce_caps(tmp_path, RunCaps(max_count=4, max_bytes=None, per_session=None), saved="new0") == ["heavy0",
                                                                                                           "heavy1"]
    assert set(names(tmp_path)) == {"heavy2", "light0", "cli-run", "new0"}
    runs = indexed_runs(tmp_path)[0]
    over_by_one = sum(run.bytes for run in runs) - min(run.bytes for run in runs)
    # one run each now: the session whose run is the oldest goes first
    assert enforce_caps(tmp_path, RunCaps(max_count=None, max_bytes=over_by_one, per_session=None),
                        saved="new0") == ["light0"]
    assert set(names(tmp_path)) == {"heavy2", "cli-run", "new0"}


def test_the_run_just_saved_stays_even_past_every_cap(tmp_path):
    save(tmp_path, "only", "a", finished_at=0, padding=10_000)
    assert enforce_caps(tmp_path, RunCaps(max_count=0, max_bytes=1, per_session=0), saved="only") == []
    assert names(tmp_path) == ["only"]


def weights_kept(root) -> dict[str, bool]:
    return {folder.name: (folder / WEIGHTS_FILE).is_file() for folder in root.iterdir() if folder.is_dir()}


def test_past_the_byte_cap_the_oldest_runs_lose_their_weights_first_and_keep_their_records(tmp_path):
    for index, owner in enumerate("abab"):
        save(tmp_path, f"run{index}", owner, finished_at=index, padding=100, weights=10_000)
    records = {run.name: run.bytes - run.weights_bytes for run in indexed_runs(tmp_path)[0]}
    cap = sum(records.values()) + 2 * 10_000  # room for two runs' weights
    assert enforce_caps(tmp_path, RunCaps(max_count=None, max_bytes=cap, per_session=None), saved="run3") == []
    assert names(tmp_path) == ["run3", "run2", "run1", "run0"]  # every record stays, so every chart does
    assert weights_kept(tmp_path) == {"run0": False, "run1": False, "run2": True, "run3": True}
    note = json.loads((tmp_path / "run0" / "results.json").read_text())[WEIGHTS_RECORD_KEY]
    assert note["file"] is None and note["cap_bytes"] == cap and isinstance(note["removed_at"], float)


def test_the_run_just_saved_keeps_its_weights_and_whole_runs_go_only_when_records_alone_are_past_the_cap(tmp_path):
    for index in range(3):
        save(tmp_path, f"old{index}", "a", finished_at=index, padding=1000, weights=10_000)
    save(tmp_path, "new", "b", finished_at=10, padding=1000, weights=10_000)
    runs = {run.name: run for run in indexed_runs(tmp_path)[0]}
    cap = runs["new"].bytes + runs["old2"].bytes - runs["old2"].weights_bytes  # the new run whole, one record beside it
    removed = enforce_caps(tmp_path, RunCaps(max_count=None, max_bytes=cap, per_session=None), saved="new")
    assert removed == ["old0", "old1"] and names(tmp_path) == ["new", "old2"]
    assert weights_kept(tmp_path) == {"new": True, "old2": False}


def test_the_index_counts_a_runs_bytes_without_the_weights_removed_since(tmp_path):
    folder = save(tmp_path, "run0", "a", finished_at=0, padding=100, weights=10_000)
    [before] = indexed_runs(tmp_path)[0]
    assert before.bytes == folder_bytes(folder) and before.weights_bytes == 10_000
    (folder / WEIGHTS_FILE).unlink()  # by hand: the record is unchanged
    [after] = indexed_runs(tmp_path)[0]
    assert after.bytes == folder_bytes(folder) == before.bytes - 10_000 and after.weights_bytes == 0


def test_the_caps_sentence_says_weights_go_first_only_under_a_byte_cap():
    weights_first = "Past its disk space, the oldest runs lose their pruned weights first and keep their records"
    assert weights_first in RunCaps(max_count=None, max_bytes=2**30, per_session=None).describe()
    assert weights_first not in RunCaps(max_count=10, max_bytes=None, per_session=None).describe()


def test_run_names_carry_64_random_bits(tmp_path):
    made = {new_run_directory(tmp_path, RECORD).name for _ in range(200)}
    assert len(made) == 200
    assert all(re.fullmatch(r"\d{8}-\d{6}-spap-0\.30-[0-9a-f]{16}", name) for name in made)


def test_the_app_keeps_a_sessions_runs_within_its_share(tiny, text_files, tmp_path, monkeypatch):
    from spap_core.methods.registry import PruneSettings
    from spap_service.data import DataSpec, TextChoice
    from spap_service.jobs import ProgressReporter
    from spap_service.runs import RunRequest, run_pruning, saved_runs

    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("SPAP_SAVED_RUNS_PER_SESSION", "2")
    data = DataSpec(calibration=TextChoice(kind="file", path=str(text_files["calib"])),
                    evaluation=TextChoice(kind="file", path=str(text_files["eval"])), nsamples=4, seqlen=32,
                    eval_windows=2, eval_len=32, batch_size=2)
    made = []
    for sparsity in (0.1, 0.2, 0.3):
        request = RunRequest(PruneSettings(method="magnitude", sparsity=sparsity), 0, data)
        made.append(run_pruning(tiny, request, ProgressReporter(), threading.Event(), owner="me").saved_to.name)
    assert list(saved_runs(owner="me").table["run"]) == made[:0:-1]  # the two newest, newest first
    assert not (tmp_path / made[0]).exists()
