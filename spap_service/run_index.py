"""The saved runs of the results folder as one index file, and the caps that keep them bounded.

Listing the saved runs happens on every load of Run SPAP and Compare runs, by every browser of a
class: reading every results.json each time would grow with the folder. The index keeps each run's
summary (what the saved-runs table shows, its owner, its size on disk and its pruned weights' share of
it) with the stamps of the results.json it was read from and of its weights file. Listing looks at the
folder's entries and those stamps only, and reads a results.json again only when either is new or
changed: a run written by the CLI into the folder, a record edited or damaged since, or weights removed
since, is still seen (and counted) as it is now.

The runs the app saved (their record names an owner) are capped: at most `max_count` runs and
`max_bytes` on disk in the folder, and at most `per_session` runs of one browser session. The count
and per-session caps count runs: past them, runs are removed a session's oldest first, the saving
session's own when it is over its share, else those of the session holding the most (of sessions
holding as many, the one with the oldest run). Past the byte cap, the pruned weights go first, those
of the oldest runs first: a run's record stays with the note of why its weights were removed, so its
charts stay available while the weights, most of a run's bytes, make room. Only when the records
alone are past the byte cap are whole runs removed, in the order above. The run just saved is never
touched, and neither is a folder the app did not save (a CLI run someone put there)."""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from spap_core.errors import UnreadableRunError
from spap_core.storage.runs import read_record
from spap_core.storage.weights import WEIGHTS_FILE

INDEX_FILE = ".run-index.json"
LOCK_FILE = ".run-index.lock"
SUMMARY_FIELDS = ("method", "sparsity", "ppl_dense", "ppl", "ppl_ci95", "ppl_before_recovery", "seeds", "model",
                  "owner", "finished_at")
WEIGHTS_RECORD_KEY = "pruned_weights"  # the record's note of the weights kept with it: their file, or why not


@dataclass(frozen=True)
class RunCaps:
    """How many saved runs the results folder keeps (None: no cap)."""

    max_count: int | None
    max_bytes: int | None
    per_session: int | None

    def describe(self) -> str:
        """The caps in one sentence, from their values."""
        whole = [f"{self.max_count} runs" if self.max_count else "",
                 f"{self.max_bytes / 2**20:.0f} MB" if self.max_bytes else ""]
        parts = [" and ".join(part for part in whole if part)] if any(whole) else []
        parts += [f"{self.per_session} runs of one browser"] if self.per_session else []
        if not parts:
            return "This server keeps every saved run."
        weights_first = (" Past its disk space, the oldest runs lose their pruned weights first and keep their records "
                         "and charts." if self.max_bytes else "")
        return (f"This server keeps at most {', and '.join(parts)}; past that, the oldest runs of a browser go first "
                f"(the one saving, once past its share; else the one with the most).{weights_first}")


@dataclass(frozen=True)
class IndexedRun:
    """One saved run as the index holds it."""

    name: str
    summary: dict  # SUMMARY_FIELDS of its record
    bytes: int  # its folder's size on disk
    weights_bytes: int  # its pruned weights file's share of `bytes`, 0 when it has none

    @property
    def owner(self) -> str | None:
        owner = self.summary.get("owner")
        return owner if isinstance(owner, str) and owner else None

    @property
    def finished_at(self) -> float:
        value = self.summary.get("finished_at", 0)
        return value if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


_lock = threading.Lock()  # this process's threads; the file lock orders other processes


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with _lock, open(root / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def indexed_runs(root: Path) -> tuple[list[IndexedRun], list[UnreadableRunError]]:
    """The complete runs under `root`, newest first, and why each unreadable one could not be
    read. Brings the index up to date with the folder (see the module's docstring)."""
    with _locked(root):
        stored = _read_index(root)
        current, unreadable, runs = {}, [], []
        for folder in _run_folders(root):
            stamp = _stamp(folder)
            entry = stored.get(folder.name)
            # an entry summarised with other fields (an index written by an older app) is read again
            if entry is None or entry.get("stamp") != stamp or set(entry.get("summary", {})) != set(SUMMARY_FIELDS):
                try:
                    record = read_record(folder)
                except UnreadableRunError as exc:
                    unreadable.append(exc)
                    continue
                weights = stamp[-1]
                entry = {"stamp": stamp, "bytes": folder_bytes(folder), "weights_bytes": weights[1] if weights else 0,
                         "summary": {key: record.get(key) for key in SUMMARY_FIELDS}}
            current[folder.name] = entry
            runs.append(IndexedRun(folder.name, entry["summary"], entry["bytes"], entry["weights_bytes"]))
        if current != stored:
            _write_index(root, current)
    runs.sort(key=lambda run: (run.finished_at, run.name), reverse=True)
    return runs, unreadable


def enforce_caps(root: Path, caps: RunCaps, saved: str) -> list[str]:
    """Remove app-saved runs, or past the byte cap first their pruned weights, to bring the folder
    within the caps (see the module's docstring), never touching `saved`, the run just written;
    returns the names of the runs removed whole."""
    runs, _ = indexed_runs(root)
    removable = sorted((run for run in runs if run.owner is not None and run.name != saved),
                       key=lambda run: (run.finished_at, run.name))  # oldest first
    saver = next((run.owner for run in runs if run.name == saved), None)
    count, size = len(runs), sum(run.bytes for run in runs)
    listed_size, removed = size, []
    while removable:
        by_owner: dict[str | None, list[IndexedRun]] = {}  # every removable run has an owner; `saver` may not
        for run in removable:
            by_owner.setdefault(run.owner, []).append(run)
        saver_runs = len(by_owner.get(saver, [])) + 1  # the saved run counts towards its session's share
        over_count = caps.max_count is not None and count > caps.max_count
        over_bytes = caps.max_bytes is not None and size > caps.max_bytes
        oldest_weights = next((run for run in removable if run.weights_bytes), None)
        if caps.per_session is not None and saver in by_owner and saver_runs > caps.per_session:
            victim = by_owner[saver][0]
        elif over_bytes and not over_count and oldest_weights is not None and caps.max_bytes is not None:
            removable[removable.index(oldest_weights)] = _remove_weights(root, oldest_weights, caps.max_bytes)
            size -= oldest_weights.weights_bytes
            continue
        elif over_count or over_bytes:
            victim = max(by_owner.values(), key=len)[0]
        else:
            break
        removable.remove(victim)
        shutil.rmtree(root / victim.name, ignore_errors=True)
        count, size = count - 1, size - victim.bytes
        removed.append(victim.name)
    if size != listed_size:
        indexed_runs(root)  # drop the runs removed from the index, and count the bytes left of the others
    return removed


def _remove_weights(root: Path, run: IndexedRun, max_bytes: int) -> IndexedRun:
    """Remove the run's pruned weights to make room within `max_bytes`, once its record notes when
    and for which cap (RunOutcome.weights_missing words it): the record is replaced in one rename
    before the weights go, so the folder holds a whole record that never names weights it lacks;
    returns the run as it is now."""
    folder = root / run.name
    try:
        record = read_record(folder)
    except UnreadableRunError:  # removed or damaged meanwhile: there is no record to note it in
        pass
    else:
        record[WEIGHTS_RECORD_KEY] = {"file": None, "removed_at": time.time(), "cap_bytes": max_bytes}
        _replace_file(folder / "results.json", json.dumps(record, indent=2))
    (folder / WEIGHTS_FILE).unlink(missing_ok=True)
    return replace(run, bytes=run.bytes - run.weights_bytes, weights_bytes=0)


def _run_folders(root: Path) -> list[Path]:
    """The folders of `root` that hold a complete run (results.json is written last)."""
    if not root.is_dir():
        return []
    return [entry for entry in root.iterdir() if not entry.name.startswith(".") and (entry / "results.json").is_file()]


def _stamp(folder: Path) -> list:
    """What changes when a run's record or pruned weights change: the modification time and size of
    its results.json, and those of its weights file (None without one)."""
    record = (folder / "results.json").stat()
    try:
        weights = (folder / WEIGHTS_FILE).stat()
    except FileNotFoundError:
        return [record.st_mtime_ns, record.st_size, None]
    return [record.st_mtime_ns, record.st_size, [weights.st_mtime_ns, weights.st_size]]


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under `folder`: what a saved run takes of the cap, its weights included."""
    return sum(entry.stat().st_size for entry in folder.rglob("*") if entry.is_file())


def _read_index(root: Path) -> dict:
    """The stored index, or an empty one when it is missing or damaged (it is rebuilt from the folder)."""
    try:
        stored = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def _write_index(root: Path, index: dict) -> None:
    _replace_file(root / INDEX_FILE, json.dumps(index))


def _replace_file(file: Path, text: str) -> None:
    """Replace `file` by `text` in one rename, so a reader never sees half of it."""
    partial = file.with_name(f"{file.name}.{os.getpid()}.{threading.get_ident()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, file)
