"""The app's experiments as plain functions: a pruning run (prune + dense/pruned perplexity, the
CLI's `prune` flow), perplexity-vs-sparsity sweeps, one-hyperparameter sensitivity scans, latency
comparisons.

Why here and not in a page: these functions run on the job queue's worker thread, which must make
no streamlit calls, and the tests call them directly. They only sequence spap_core functions; no
algorithm lives here. (The run flow mirrors spap_core.cli.run_prune; see the report about sharing it.)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from spap_core.data import TextSource, calibration_windows, evaluation_windows, resolve_text, text_from_file
from spap_core.evaluate import PerplexityResult, perplexity
from spap_core.experiment import Experiment, run_experiment
from spap_core.jobs import ProgressReporter
from spap_core.latency import LatencyReport, latency_ratios, measure_latencies
from spap_core.methods.registry import PruneSettings
from spap_core.methods.spap import SpapStep
from spap_core.models import LoadedModel
from spap_core.prune import PruneResult
from spap_core.runs import list_runs, new_run_directory, read_run, results_root, write_run
from spap_core.shrink import save_pruned


# ----------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TextChoice:
    """Where a text comes from: a local file, WikiText-2 from the hub, or an uploaded file (kept
    in memory; `digest` identifies it in cache keys so its text is never hashed twice)."""

    kind: str  # "file" | "hub" | "upload"
    path: str = ""
    uploaded: TextSource | None = field(default=None, compare=False, repr=False)
    digest: str = ""

    @staticmethod
    def from_upload(source: TextSource) -> TextChoice:
        digest = hashlib.sha256(source.text.encode()).hexdigest()[:16]
        return TextChoice(kind="upload", path=source.label, uploaded=source, digest=digest)

    @property
    def label(self) -> str:
        return {"file": f"file {self.path}", "hub": "WikiText-2 (hub)", "upload": self.path}[self.kind]

    @property
    def cache_key(self) -> str:
        if self.kind == "file":
            file = Path(self.path).expanduser()
            stamp = file.stat().st_mtime_ns if file.is_file() else 0
            return f"file:{file.resolve()}:{stamp}"
        return f"{self.kind}:{self.digest}"

    def to_dict(self) -> dict:
        """What identifies the choice in a saved run (an uploaded text itself is not kept)."""
        return {"kind": self.kind, "path": self.path, "digest": self.digest}

    def resolve(self, purpose: str) -> TextSource:
        """The text itself; raises SpapInputError/SourceUnavailableError with a user message."""
        if self.kind == "hub":
            return resolve_text("wikitext2", purpose)
        if self.kind == "upload" and self.uploaded is not None:
            return self.uploaded
        return text_from_file(self.path)


@dataclass(frozen=True)
class DataSpec:
    """Calibration and evaluation data of a run and their sizes (what every result is reported with)."""

    calibration: TextChoice
    evaluation: TextChoice
    nsamples: int
    seqlen: int
    eval_windows: int  # 0 = the whole evaluation text
    eval_len: int
    batch_size: int

    def to_dict(self) -> dict:
        return {"calibration": self.calibration.to_dict(), "evaluation": self.evaluation.to_dict(),
                "nsamples": self.nsamples, "seqlen": self.seqlen, "eval_windows": self.eval_windows,
                "eval_len": self.eval_len, "batch_size": self.batch_size}

    @staticmethod
    def from_dict(values: dict) -> DataSpec:
        return DataSpec(**{**values, "calibration": TextChoice(**values["calibration"]),
                           "evaluation": TextChoice(**values["evaluation"])})

    @property
    def evaluation_key(self) -> str:
        return f"{self.evaluation.cache_key}|{self.eval_len}|{self.eval_windows}"

    @property
    def cache_key(self) -> str:
        return f"{self.calibration.cache_key}|{self.nsamples}x{self.seqlen}|{self.evaluation_key}"


@dataclass(frozen=True)
class RunRequest:
    """One pruning run: method and hyperparameters, calibration seed and data."""

    settings: PruneSettings
    seed: int
    data: DataSpec

    @property
    def cache_key(self) -> str:
        return f"{asdict(self.settings)}|seed={self.seed}|{self.data.cache_key}"


class _BoundedCache:
    """A small thread-safe LRU map: dense perplexities and token windows are reused across the
    jobs of every session (the worker thread cannot use st.cache_data)."""

    def __init__(self, max_entries: int) -> None:
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._max_entries:
                self._items.popitem(last=False)


_dense_perplexities = _BoundedCache(max_entries=32)
_token_windows = _BoundedCache(max_entries=16)


def model_key(loaded: LoadedModel) -> str:
    """Identifies a loaded model in caches and results: source, device and dtype."""
    return f"{loaded.source}|{loaded.device}|{next(loaded.model.parameters()).dtype}"


@dataclass(frozen=True)
class PreparedData:
    calibration_source: TextSource
    evaluation_source: TextSource
    calibration: torch.Tensor  # [N, L] token ids
    evaluation: torch.Tensor  # [W, L] token ids


def prepare_data(loaded: LoadedModel, data: DataSpec, seed: int) -> PreparedData:
    """Token windows for calibration and evaluation (memoised: tokenizing WikiText takes seconds)."""
    key = (model_key(loaded), data.cache_key, seed)
    cached = _token_windows.get(key)
    if cached is not None:
        return cached
    calibration_source = data.calibration.resolve("calibration")
    evaluation_source = data.evaluation.resolve("evaluation")
    prepared = PreparedData(
        calibration_source=calibration_source,
        evaluation_source=evaluation_source,
        calibration=calibration_windows(loaded.tokenizer, calibration_source, data.nsamples, data.seqlen, seed),
        evaluation=evaluation_windows(loaded.tokenizer, evaluation_source, data.eval_len, data.eval_windows or None),
    )
    _token_windows.put(key, prepared)
    return prepared


def _batch_reporter(progress: ProgressReporter, what: str) -> Callable[[int, int], None]:
    return lambda done, total: progress.update(phase=f"{what}: batch {done} of {total}")


def dense_perplexity(loaded: LoadedModel, data: DataSpec, windows: torch.Tensor, progress: ProgressReporter,
                     cancel: threading.Event) -> tuple[PerplexityResult, bool]:
    """Perplexity of the unpruned model, computed once per model and evaluation set.
    Returns (result, whether it came from the cache)."""
    key = (model_key(loaded), data.evaluation_key)
    cached = _dense_perplexities.get(key)
    if cached is not None:
        return cached, True
    result = perplexity(loaded.model, windows, on_batch=_batch_reporter(progress, "dense perplexity"), cancel=cancel)
    _dense_perplexities.put(key, result)
    return result, False


# ------------------------------------------------------------------------------------ one run


@dataclass
class RunOutcome:
    """Everything a finished run shows and offers for download. Holds the pruned model, so a
    session keeps only its latest outcome with the model attached; a run reloaded from the
    results folder has no model (result.model is None) and no tokenizer."""

    request: RunRequest
    model_key: str  # which loaded model was pruned (source, device, dtype)
    tokenizer: Any = field(repr=False)  # saved with the pruned model
    result: PruneResult
    dense: PerplexityResult
    pruned: PerplexityResult
    record: dict
    finished_at: float = field(default_factory=time.time)
    saved_to: Path | None = None  # its folder under the results root

    @property
    def has_model(self) -> bool:
        return self.result.model is not None


def _experiment_with_progress(loaded: LoadedModel, data: PreparedData, request: RunRequest, dense: PerplexityResult,
                              progress: ProgressReporter, cancel: threading.Event) -> Experiment:
    """run_experiment on a copy of the model, reporting layer i of L and ρ iteration k of K."""
    iterations = request.settings.penalty.iterations if request.settings.method == "spap" else 0
    n_layers = len(loaded.family.decoder_layers(loaded.model))
    progress.update(phase=f"pruning ({request.settings.method})", layer=1, n_layers=n_layers,
                    iteration=0, n_iterations=iterations)

    def on_layer(done: int, total: int) -> None:
        progress.update(layer=min(done + 1, total), n_layers=total, iteration=0 if done < total else iterations)

    def on_step(step: SpapStep) -> None:
        progress.update(layer=step.layer + 1, iteration=step.iteration)

    return run_experiment(loaded, data.calibration, data.evaluation, request.settings, seed=request.seed,
                          batch_size=request.data.batch_size, dense=dense, on_layer=on_layer, on_step=on_step,
                          on_pruned_batch=_batch_reporter(progress, "pruned perplexity"), cancel=cancel)


def run_pruning(loaded: LoadedModel, request: RunRequest, progress: ProgressReporter,
                cancel: threading.Event, owner: str = "") -> RunOutcome:
    """Prune a copy of the model and evaluate dense and pruned perplexity on the same windows.
    `owner` (the browser session) is saved with the run, so each session lists its own runs."""
    progress.update(phase="tokenizing calibration and evaluation text")
    data = prepare_data(loaded, request.data, request.seed)
    started = time.perf_counter()
    dense, dense_cached = dense_perplexity(loaded, request.data, data.evaluation, progress, cancel)
    dense_seconds = 0.0 if dense_cached else time.perf_counter() - started
    experiment = _experiment_with_progress(loaded, data, request, dense, progress, cancel)
    finished_at = time.time()
    record = experiment.record(
        loaded, dense_eval_seconds=dense_seconds, dense_ppl_cached=dense_cached,
        eval_source=data.evaluation_source.label, calib_source=data.calibration_source.label,
        nsamples=request.data.nsamples, seqlen=request.data.seqlen, seed=request.seed,
        model_key=model_key(loaded), data=request.data.to_dict(), finished_at=finished_at, owner=owner,
    )
    # saved as it finishes: a crash or restart of the app loses at most the run in progress
    saved_to = write_run(new_run_directory(results_root(), record), record, experiment.result)
    return RunOutcome(request=request, model_key=model_key(loaded), tokenizer=loaded.tokenizer,
                      result=experiment.result, dense=dense, pruned=experiment.pruned, record=record,
                      finished_at=finished_at, saved_to=saved_to)


def _stored_perplexity(record: dict, key: str) -> PerplexityResult:
    tokens = record["eval_tokens"]
    return PerplexityResult(perplexity=record[key], nll=math.log(record[key]) * tokens, tokens=tokens,
                            windows=record["eval_windows"], seqlen=record["eval_len"])


def saved_runs(owner: str | None = None) -> pd.DataFrame:
    """The finished runs in the results folder, newest first, one row each with its folder name
    (`run`); only those `owner` made when given."""
    rows = []
    for folder in list_runs(results_root()):
        record = json.loads((folder / "results.json").read_text())
        if owner is not None and record.get("owner") != owner:
            continue
        rows.append({"finished": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("finished_at", 0))),
                     "method": record["method"], "sparsity": record["sparsity"], "ppl dense": record["ppl_dense"],
                     "ppl pruned": record["ppl"], "model": record["model"], "run": folder.name,
                     "finished_at": record.get("finished_at", 0)})
    columns = ["finished", "method", "sparsity", "ppl dense", "ppl pruned", "model", "run", "finished_at"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("finished_at", ascending=False, kind="stable").drop(columns="finished_at")


def saved_run_folder(name: str) -> Path | None:
    """The results folder of the saved run called `name`, or None: only a name listed in the
    results root is accepted, so a shared link can never point the app at another path."""
    return next((folder for folder in list_runs(results_root()) if folder.name == name), None)


def load_saved_run(folder: str | Path) -> RunOutcome:
    """A finished run as it was saved: every page but the model download and latency works on it."""
    record, result = read_run(folder)
    request = RunRequest(settings=result.settings, seed=record["seed"], data=DataSpec.from_dict(record["data"]))
    return RunOutcome(request=request, model_key=record["model_key"], tokenizer=None, result=result,
                      dense=_stored_perplexity(record, "ppl_dense"), pruned=_stored_perplexity(record, "ppl"),
                      record=record, finished_at=record["finished_at"], saved_to=Path(folder))


def pruned_model_zip(outcome: RunOutcome) -> bytes:
    """The pruned model as save_pruned writes it (safetensors + tokenizer + config), zipped."""
    with tempfile.TemporaryDirectory(prefix="spap-pruned-") as folder:
        save_pruned(outcome.result.model, outcome.tokenizer, folder)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(Path(folder).iterdir()):
                archive.write(file, arcname=f"pruned-model/{file.name}")
        return buffer.getvalue()


# --------------------------------------------------------------------------- sweeps and scans


def sweep_sparsities(loaded: LoadedModel, base: RunRequest, methods: list[str], sparsities: list[float],
                     progress: ProgressReporter, cancel: threading.Event) -> pd.DataFrame:
    """Perplexity of every method at every sparsity, all on the same calibration and evaluation
    windows as `base`. One row per (method, sparsity); pruned models are dropped at once."""
    progress.update(phase="tokenizing calibration and evaluation text")
    data = prepare_data(loaded, base.data, base.seed)
    dense, _ = dense_perplexity(loaded, base.data, data.evaluation, progress, cancel)
    rows = []
    points = [(method, sparsity) for method in methods for sparsity in sparsities]
    for index, (method, sparsity) in enumerate(points, start=1):
        progress.update(step=index, n_steps=len(points))
        request = replace(base, settings=replace(base.settings, method=method, sparsity=sparsity))
        experiment = _experiment_with_progress(loaded, data, request, dense, progress, cancel)
        rows.append({"method": method, "sparsity": sparsity, "perplexity": experiment.pruned.perplexity,
                     "dense_perplexity": dense.perplexity, "mean_layer_error": experiment.result.mean_layer_error,
                     "params_after": experiment.result.params_after, "eval_tokens": experiment.pruned.tokens})
        del experiment
    return pd.DataFrame(rows)


def sweep_key(loaded: LoadedModel, base: RunRequest, methods: list[str], sparsities: list[float]) -> str:
    """Identifies a sweep's table: model, data and every setting except the swept method/sparsity."""
    neutral = replace(base, settings=replace(base.settings, method="spap", sparsity=0.5))
    return f"sweep|{model_key(loaded)}|{neutral.cache_key}|{sorted(methods)}|{sorted(sparsities)}"


@dataclass(frozen=True)
class ScanParameter:
    """A hyperparameter the sensitivity page can vary: how to read it from a RunRequest, how to
    set it, and a sensible range."""

    label: str
    read: Callable[[RunRequest], float]
    apply: Callable[[RunRequest, float], RunRequest]
    low: float
    high: float
    integer: bool = False
    log_scale: bool = False
    summary_key: str = ""  # the item of the settings summary this parameter sets (left out while it varies)

    def values(self, low: float, high: float, points: int) -> list[float]:
        grid = np.geomspace(low, high, points) if self.log_scale else np.linspace(low, high, points)
        if self.integer:
            return sorted({int(round(v)) for v in grid})
        return [float(f"{v:.4g}") for v in grid]


def _with_settings(request: RunRequest, **changes: Any) -> RunRequest:
    return replace(request, settings=replace(request.settings, **changes))


def _with_penalty(request: RunRequest, **changes: Any) -> RunRequest:
    return _with_settings(request, penalty=replace(request.settings.penalty, **changes))


def _with_refit(request: RunRequest, **changes: Any) -> RunRequest:
    return _with_settings(request, refit=replace(request.settings.refit, **changes))


def _with_altmin(request: RunRequest, **changes: Any) -> RunRequest:
    return _with_settings(request, altmin=replace(request.settings.altmin, **changes))


SCAN_PARAMETERS: dict[str, ScanParameter] = {
    parameter.label: parameter
    for parameter in [
        ScanParameter("sparsity", lambda r: r.settings.sparsity,
                      lambda r, v: _with_settings(r, sparsity=float(v)), 0.1, 0.6, summary_key="sparsity"),
        ScanParameter("K (ρ iterations)", lambda r: r.settings.penalty.iterations,
                      lambda r, v: _with_penalty(r, iterations=int(v)), 1, 40, integer=True, summary_key="K"),
        ScanParameter("ρ⁽⁰⁾ (initial penalty)", lambda r: r.settings.penalty.rho0,
                      lambda r, v: _with_penalty(r, rho0=float(v)), 1e-4, 10.0, log_scale=True, summary_key="rho0"),
        ScanParameter("τ (penalty growth)", lambda r: r.settings.penalty.tau,
                      lambda r, v: _with_penalty(r, tau=float(v)), 1.05, 8.0, summary_key="tau"),
        ScanParameter("t (score balance)", lambda r: r.settings.penalty.balance,
                      lambda r, v: _with_penalty(r, balance=float(v)), 0.0, 2.0, summary_key="t"),
        ScanParameter("α (mask momentum)", lambda r: r.settings.penalty.momentum,
                      lambda r, v: _with_penalty(r, momentum=float(v)), 0.05, 1.0, summary_key="alpha"),
        ScanParameter("δ (ridge)", lambda r: r.settings.refit.ridge,
                      lambda r, v: _with_refit(r, ridge=float(v)), 1e-3, 1.0, log_scale=True, summary_key="delta"),
        ScanParameter("β (target correction)", lambda r: r.settings.target_correction,
                      lambda r, v: _with_settings(r, target_correction=float(v)), 0.0, 1.0, summary_key="beta"),
        ScanParameter("alternating-minimization rounds", lambda r: r.settings.altmin.rounds,
                      lambda r, v: _with_altmin(r, rounds=int(v)), 0, 4, integer=True, summary_key="altmin"),
        ScanParameter("calibration samples", lambda r: r.data.nsamples,
                      lambda r, v: replace(r, data=replace(r.data, nsamples=int(v))), 2, 32, integer=True,
                      summary_key="calibration"),
    ]
}


def scan_key(loaded: LoadedModel, base: RunRequest, parameter: str, values: list[float]) -> str:
    """Identifies a scan's table: model, data and every setting except the scanned one."""
    neutral = SCAN_PARAMETERS[parameter].apply(base, values[0])
    return f"scan|{model_key(loaded)}|{neutral.cache_key}|{parameter}|{values}"


def sensitivity_scan(loaded: LoadedModel, base: RunRequest, parameter: str, values: list[float],
                     progress: ProgressReporter, cancel: threading.Event) -> pd.DataFrame:
    """Vary one hyperparameter (others as in `base`): mean layer error and perplexity per value. Invalid values are refused before any work starts (SpapInputError)."""
    scan = SCAN_PARAMETERS[parameter]
    requests = [scan.apply(base, value) for value in values]  # dataclass checks run here
    rows = []
    for index, (value, request) in enumerate(zip(values, requests), start=1):
        progress.update(step=index, n_steps=len(values), phase="tokenizing calibration and evaluation text")
        data = prepare_data(loaded, request.data, request.seed)
        dense, _ = dense_perplexity(loaded, request.data, data.evaluation, progress, cancel)
        experiment = _experiment_with_progress(loaded, data, request, dense, progress, cancel)
        rows.append({"value": value, "mean_layer_error": experiment.result.mean_layer_error,
                     "perplexity": experiment.pruned.perplexity, "dense_perplexity": dense.perplexity,
                     "eval_tokens": experiment.pruned.tokens})
        del experiment
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyOptions:
    seqlen: int
    decode_tokens: int
    repeats: int
    warmup: int


RATIO_LABELS = {
    "prefill_speedup": "prefill speed-up (measured)",
    "decode_speedup": "decode speed-up (measured)",
    "theoretical_flops_ratio": "prefill FLOPs ratio (theory)",
    "linear_flops_ratio": "linear-layer FLOPs ratio (theory)",
    "theoretical_params_ratio": "parameter ratio (theory)",
    "weight_memory_ratio": "weight memory ratio",
}


@dataclass(frozen=True)
class LatencyComparison:
    run_finished_at: float  # identifies the run whose pruned model was measured
    options: LatencyOptions
    dense: LatencyReport
    pruned: LatencyReport

    def ratios(self) -> dict[str, float]:
        """Dense ÷ pruned (speed-ups and savings > 1 mean the pruned model is better)."""
        ratios = latency_ratios(self.dense, self.pruned)
        return {label: ratios[key] for key, label in RATIO_LABELS.items()}


def compare_latency(loaded: LoadedModel, outcome: RunOutcome, options: LatencyOptions,
                    progress: ProgressReporter, cancel: threading.Event) -> LatencyComparison:
    """Time the dense and the pruned model on the current device with identical inputs, in
    alternation so that both see the same machine load."""
    progress.update(phase="timing the dense and the pruned model in turn")
    dense, pruned = measure_latencies(
        [loaded.model, outcome.result.model], seqlen=options.seqlen, decode_tokens=options.decode_tokens,
        repeats=options.repeats, warmup=options.warmup, cancel=cancel)
    return LatencyComparison(run_finished_at=outcome.finished_at, options=options, dense=dense, pruned=pruned)
