"""Run records on disk: results.json (settings, metrics, provenance), the method's trace as CSV
(one row per step) and its per-unit arrays (SPAP: the soft masks), kept channels and channel
scores as compressed arrays. Written
next to a saved pruned model by the CLI, and by the app as each run finishes, so a restart loses
nothing but the run in progress; `read_run` gives back everything but the weights."""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeGuard, cast

import numpy as np

from spap_core.errors import UnreadableRunError
from spap_core.methods.base import MethodStep
from spap_core.methods.registry import PruneSettings
from spap_core.methods.trace import steps_from_record, trace_arrays, trace_rows
from spap_core.pipeline.walk import HeadPruning, LayerRecord, PruneResult
from spap_core.problem.layout import HeadLayout
from spap_core.system.cache import cache_root

RESULTS_DIR_ENV = "SPAP_RESULTS_DIR"
ARRAYS_FILE = "trace_masks.npz"


def results_root() -> Path:
    """Where the app keeps finished runs: $SPAP_RESULTS_DIR, else the cache folder's runs/."""
    return Path(os.environ.get(RESULTS_DIR_ENV, cache_root() / "runs"))


RUN_ID_BYTES = 8  # 64 random bits: a run's name is what its ?run= link carries, so it must not be guessable


def new_run_directory(root: Path, record: dict) -> Path:
    """A fresh, sortable folder name: time, method, sparsity and a random suffix of 64 bits (the
    name opens the run through a results link, so knowing one run's name tells nothing of another's)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return root / f"{stamp}-{record['method']}-{record['sparsity']:.2f}-{secrets.token_hex(RUN_ID_BYTES)}"


HEADS_PREFIX = "heads_"  # the arrays and the trace file of the attention heads carry it


def write_run(directory: str | Path, record: dict, result: PruneResult) -> Path:
    """Write results.json, trace.csv and the arrays (kept channels, scores per layer, and the
    trace's per-unit arrays padded to the widest layer, each layer's width in `trace_widths`:
    spap_core.methods.trace); for a run that pruned heads too, the same for its heads under
    HEADS_PREFIX (the record holds their layout: Experiment.record). The trace's columns and arrays
    are those of the method's step type."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    step_type = result.settings.implementation.step_type
    arrays = _part_arrays("", result.layers, result.trace, step_type)
    parts = [("", result.trace)]
    if result.heads is not None:
        arrays.update(_part_arrays(HEADS_PREFIX, result.heads.layers, result.heads.trace, step_type))
        parts.append((HEADS_PREFIX, result.heads.trace))
    # numpy types **kwds as if they could fill its allow_pickle: bool (no key here is "allow_pickle")
    np.savez_compressed(path / ARRAYS_FILE, **arrays)  # type: ignore[arg-type]
    for prefix, trace in parts:
        with open(path / f"{prefix}trace.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=step_type.columns)
            writer.writeheader()
            writer.writerows(trace_rows(trace))
    # results.json last: a folder with it is complete (list_runs ignores half-written ones)
    write_record(path, record)
    return path


def write_record(directory: str | Path, record: dict) -> None:
    """results.json of a run folder: the record as indented JSON (numpy numbers as floats)."""
    (Path(directory) / "results.json").write_text(json.dumps(record, indent=2, default=float))


def _part_arrays(prefix: str, layers: list[LayerRecord], trace: Sequence[MethodStep],
                 step_type: type[MethodStep]) -> dict[str, np.ndarray]:
    """The arrays of one part of a run (the MLP channels, or the heads under HEADS_PREFIX)."""
    arrays = {**trace_arrays(trace, step_type),
              "layer_objectives": np.array([np.nan if layer.objective is None else layer.objective
                                            for layer in layers]),
              "dense_objectives": np.array([layer.dense_objective for layer in layers]),
              "widths": np.array([layer.width for layer in layers])}
    for layer in layers:
        arrays[f"keep_layer{layer.layer}"] = layer.keep
        arrays.update({f"score_layer{layer.layer}_{name}": np.asarray(score) for name, score in layer.scores.items()})
        arrays.update({f"down_norms_layer{layer.layer}_{name}": norms
                       for name, norms in layer.output_column_norms.items()})
    return {prefix + key: value for key, value in arrays.items()}


@contextmanager
def staged_directory(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """A fresh hidden folder beside `target` (same parent, so the same file system) to write a
    whole output into; when the block ends it becomes `target` in one rename, and when the block
    raises, Ctrl-C included, it is deleted. So `target` is never half written, nor a mix of an
    old save and a new one. With `replace`, an existing `target` is kept until the new folder is
    complete (see _move_into_place); without it, renaming onto a non-empty folder fails."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(target, "")
    staging.mkdir()
    try:
        yield staging
        _move_into_place(staging, target, replace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _hidden_sibling(target: Path, tag: str) -> Path:
    """'.<name>.<tag><random>' next to `target`: hidden, unique, and short enough for the OS even
    when the name itself is near its 255-character limit."""
    return target.parent / f".{target.name[:200]}.{tag}{uuid.uuid4().hex[:8]}"


def _move_into_place(staging: Path, target: Path, replace: bool) -> None:
    """Rename `staging` to `target`. An existing `target` (with `replace`) is first moved aside,
    put back if the rename fails, and deleted only once the new folder is in place."""
    if not (replace and os.path.lexists(target)):
        os.rename(staging, target)  # POSIX: replaces an empty folder, refuses a non-empty one
        return
    aside = _hidden_sibling(target, "old-")
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    if aside.is_symlink():  # `target` was a link to a folder: drop the link, not what it points to
        aside.unlink()
    else:
        shutil.rmtree(aside, ignore_errors=True)


def _named_arrays(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}


def list_runs(root: str | Path) -> list[Path]:
    """Complete run folders under `root`, newest first."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if (p / "results.json").is_file()), key=lambda p: p.name, reverse=True)


# The fields of results.json that readers rely on, with their JSON types; a float must be finite.
RECORD_FIELDS: dict[str, type] = {
    "method": str, "sparsity": float, "ppl": float, "ppl_dense": float, "params_before": int, "params_after": int,
    "calibration_tokens": int, "eval_tokens": int, "eval_windows": int, "eval_len": int, "settings": dict,
    "timings": dict,
}
MAX_RECORD_BYTES = 16 * 2**20
# Each perplexity's per-window mean losses and 95% interval (spap_core.evaluation.intervals). A record
# saved before they were kept has neither: read_record gives it no windows and no interval (None).
WINDOW_NLL_KEYS = {"ppl": "window_nll", "ppl_dense": "window_nll_dense",
                   "ppl_before_recovery": "window_nll_before_recovery"}
INTERVAL_KEYS = {"ppl": "ppl_ci95", "ppl_dense": "ppl_dense_ci95", "ppl_before_recovery": "ppl_before_recovery_ci95"}
# A recovered run's `recovery` (spap_core.recovery.loop.RecoveryResult.record): its fields and JSON types.
RECOVERY_FIELDS: dict[str, type] = {"settings": dict, "steps_done": int, "final_loss": float, "seconds": float,
                                    "losses": list, "heldout_ppl": list}


def read_record(directory: str | Path) -> dict:
    """results.json of a run folder, checked: a JSON object with every field a reader relies on,
    of its type, every metric finite (a NaN perplexity is no result). Raises UnreadableRunError."""
    file = Path(directory) / "results.json"
    with record_faults(file):
        if file.stat().st_size > MAX_RECORD_BYTES:
            raise UnreadableRunError(file, f"larger than {MAX_RECORD_BYTES // 2**20} MiB, not a run record.")
        record = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(record, dict):
        raise UnreadableRunError(file, "not a JSON object.")
    for key, kind in RECORD_FIELDS.items():
        if key not in record:
            raise UnreadableRunError(file, f"no '{key}'.")
        value = record[key]
        if kind is float:
            if not _is_finite_number(value):
                raise UnreadableRunError(file, f"'{key}' is {json.dumps(value)[:40]}, not a finite number.")
        elif isinstance(value, bool) or not isinstance(value, kind):
            raise UnreadableRunError(file, f"'{key}' is {json.dumps(value)[:40]}, not a JSON {kind.__name__}.")
    for key in ("ppl", "ppl_dense"):
        if record[key] < 1:
            raise UnreadableRunError(file, f"'{key}' is {record[key]:g}; a perplexity is at least 1.")
        _check_windows(file, record, WINDOW_NLL_KEYS[key], INTERVAL_KEYS[key])
    _check_recovery(file, record)
    _check_seeds(file, record)
    return record


def _check_recovery(file: Path, record: dict) -> None:
    """A recovered run's perplexity before its recovery (a finite number ≥ 1, with its window losses
    and interval as `ppl` has them) and its `recovery` (RECOVERY_FIELDS, every loss finite); both
    null, and set so, in a run without one, a record saved before recoveries existed included."""
    before = record.setdefault("ppl_before_recovery", None)
    recovery = record.setdefault("recovery", None)
    if before is None and recovery is None:
        record.setdefault(WINDOW_NLL_KEYS["ppl_before_recovery"], [])
        record.setdefault(INTERVAL_KEYS["ppl_before_recovery"], None)
        return
    if not _is_finite_number(before) or cast(float, before) < 1:
        raise UnreadableRunError(file, f"'ppl_before_recovery' is {json.dumps(before)[:40]}, not a perplexity.")
    _check_windows(file, record, WINDOW_NLL_KEYS["ppl_before_recovery"], INTERVAL_KEYS["ppl_before_recovery"])
    if not isinstance(recovery, dict):
        raise UnreadableRunError(file, f"'recovery' is {json.dumps(recovery)[:40]}, not a JSON object.")
    for key, kind in RECOVERY_FIELDS.items():
        value = recovery.get(key)
        valid = (_is_finite_number(value) if kind is float
                 else isinstance(value, kind) and not isinstance(value, bool))
        if not valid:
            raise UnreadableRunError(file, f"recovery's '{key}' is {json.dumps(value)[:40]}, not a "
                                           f"{'finite number' if kind is float else 'JSON ' + kind.__name__}.")
    if not all(_is_finite_number(loss) for loss in recovery["losses"]):
        raise UnreadableRunError(file, "recovery's 'losses' are not all finite numbers.")


def _check_seeds(file: Path, record: dict) -> None:
    """A run repeated over calibration seeds (spap_core.evaluation.intervals.seed_fields): its seeds, a
    list of whole numbers, and one row of window losses per seed, every row as long as the run's own
    window losses; both absent for a run of one seed."""
    seeds, rows = record.get("seeds"), record.get("window_nll_by_seed")
    if seeds is None and rows is None:
        return
    if not (isinstance(seeds, list) and seeds and all(isinstance(seed, int) and not isinstance(seed, bool)
                                                      for seed in seeds)):
        raise UnreadableRunError(file, f"'seeds' is {json.dumps(seeds)[:40]}, not a list of whole numbers.")
    if not (isinstance(rows, list) and len(rows) == len(seeds)
            and all(isinstance(row, list) and len(row) == len(record["window_nll"])
                    and all(_is_finite_number(loss) for loss in row) for row in rows)):
        raise UnreadableRunError(file, "'window_nll_by_seed' is not one row of finite window losses per seed, "
                                       "each as long as 'window_nll'.")


def _check_windows(file: Path, record: dict, windows_key: str, interval_key: str) -> None:
    """A perplexity's window losses (a list of finite numbers, none when absent) and its interval (null
    or [low, high] with low ≤ high, null when absent), set in `record`."""
    window_nll = record.setdefault(windows_key, [])
    if not isinstance(window_nll, list) or not all(_is_finite_number(loss) for loss in window_nll):
        raise UnreadableRunError(file, f"'{windows_key}' is {json.dumps(window_nll)[:40]}, not a list of "
                                       "finite numbers.")
    interval = record.setdefault(interval_key, None)
    if interval is not None and not (isinstance(interval, list) and len(interval) == 2
                                     and all(_is_number(bound) and bound >= 1 for bound in interval)
                                     and interval[0] <= interval[1]):
        raise UnreadableRunError(file, f"'{interval_key}' is {json.dumps(interval)[:40]}, not null or "
                                       "[low, high] perplexities.")


def _is_number(value: object) -> TypeGuard[float]:
    """A JSON number, not a bool and not NaN (an interval's high bound may be inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _is_finite_number(value: object) -> bool:
    return _is_number(value) and math.isfinite(value)


@contextmanager
def record_faults(file: str | Path) -> Iterator[None]:
    """Any fault reading `file` (missing, unreadable, corrupt, a field absent or of the wrong type)
    as one UnreadableRunError naming the file."""
    try:
        yield
    except UnreadableRunError:
        raise
    except FileNotFoundError:
        raise UnreadableRunError(file, "missing.") from None
    except KeyError as exc:
        raise UnreadableRunError(file, f"no {exc.args[0]!r}.") from None
    except (OSError, ValueError, TypeError, IndexError, EOFError, zipfile.BadZipFile, csv.Error) as exc:
        fault = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UnreadableRunError(file, f"{fault}.") from None


def read_run(directory: str | Path) -> tuple[dict, PruneResult]:
    """The record and a PruneResult without weights (model=None): layers, scores and trace as
    they were when the run finished. Raises UnreadableRunError, naming the file and the fault."""
    path = Path(directory)
    record = read_record(path)
    with record_faults(path / "results.json"):
        settings = PruneSettings.from_dict(record["settings"])
    with record_faults(path / ARRAYS_FILE), np.load(path / ARRAYS_FILE, allow_pickle=False) as stored:
        arrays = dict(stored)
    step_type = settings.implementation.step_type
    layers, trace = _stored_part(path, arrays, "", step_type)
    heads = None
    if record.get("heads") is not None:
        with record_faults(path / "results.json"):
            layout = HeadLayout(**record["heads"]["layout"])
            head_dim = int(record["heads"]["head_dim"])
        heads = HeadPruning(layout, head_dim, *_stored_part(path, arrays, HEADS_PREFIX, step_type))
    result = PruneResult(model=None, settings=settings, layers=layers, trace=trace, timings=record["timings"],
                         params_before=record["params_before"], params_after=record["params_after"],
                         calibration_tokens=record["calibration_tokens"], heads=heads)
    return record, result


def _stored_part(path: Path, arrays: dict[str, np.ndarray], prefix: str,
                 step_type: type[MethodStep]) -> tuple[list[LayerRecord], list[MethodStep]]:
    with record_faults(path / ARRAYS_FILE):
        part = _named_arrays(arrays, prefix) if prefix else arrays
        layers = _stored_layers(part)
    with record_faults(path / f"{prefix}trace.csv"), open(path / f"{prefix}trace.csv", newline="") as f:
        pruned = [layer.width - len(layer.keep) for layer in layers]
        trace = steps_from_record(step_type, list(csv.DictReader(f)), part, pruned)
    return layers, trace


def _stored_layers(arrays: dict[str, np.ndarray]) -> list[LayerRecord]:
    layers = []
    for index, width in enumerate(arrays["widths"]):
        objective = float(arrays["layer_objectives"][index])
        layers.append(LayerRecord(
            layer=index, width=int(width), keep=arrays[f"keep_layer{index}"],
            scores=_named_arrays(arrays, f"score_layer{index}_"),
            objective=None if np.isnan(objective) else objective,
            dense_objective=float(arrays["dense_objectives"][index]),
            output_column_norms=_named_arrays(arrays, f"down_norms_layer{index}_"),
        ))
    return layers
