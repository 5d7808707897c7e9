"""One pruning run as the app makes it: the request, the outcome with its pruned model, the run
records saved as each run finishes, and the saved runs a session can list, open and download.

These functions run on the job queue's worker thread, so they make no streamlit calls; they only
sequence spap_core functions."""

from __future__ import annotations

import io
import math
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
from transformers import PreTrainedModel

from spap_core.errors import PruningCancelled, SpapInputError, UnreadableRunError
from spap_core.evaluation.intervals import seed_fields
from spap_core.evaluation.perplexity import PerplexityResult
from spap_core.methods.base import MethodStep
from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import LoadedModel, model_files, model_source
from spap_core.models.offload import is_dispatched
from spap_core.models.shrink import load_pruned, save_pruned
from spap_core.pipeline.walk import PruneResult
from spap_core.recovery.loop import RecoveryStep
from spap_core.recovery.settings import RecoverySettings
from spap_core.runner.execute import RunResult, run
from spap_core.runner.progress import RunProgress
from spap_core.runner.spec import MeasuredDense, ParameterBudget, RunSpec
from spap_core.storage.runs import (
    RESULTS_DIR_ENV,
    WINDOW_NLL_KEYS,
    new_run_directory,
    read_run,
    record_faults,
    results_root,
    staged_directory,
    write_record,
    write_run,
)
from spap_core.storage.weights import WEIGHTS_FILE, pruned_difference, read_pruned_weights, write_pruned_weights
from spap_core.system.access import overlap
from spap_service.data import DataSpec, batch_reporter, dense_perplexity, model_key, prepare_data
from spap_service.jobs import ProgressReporter
from spap_service.limits import server_limits
from spap_service.run_index import WEIGHTS_RECORD_KEY, enforce_caps, folder_bytes, indexed_runs
from spap_service.uncertainty import interval_text

MAX_SEEDS = 5  # calibration seeds a run of the app repeats over, at most (each one a whole run)


@dataclass(frozen=True)
class RunRequest:
    """One pruning run: method and hyperparameters, calibration seed and data, optionally one
    parameter budget whose split between MLP channels and heads replaces the settings' sparsities,
    and the recovery after pruning (none by default).
    `seeds` > 1 repeats it over the calibration seeds seed, seed + 1, …, each on the same evaluation
    windows (seed_requests), so its perplexity carries the seeds' spread besides the windows'."""

    settings: PruneSettings
    seed: int
    data: DataSpec
    budget: ParameterBudget | None = None
    seeds: int = 1
    recovery: RecoverySettings = RecoverySettings()

    def __post_init__(self) -> None:
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or not 1 <= self.seeds <= MAX_SEEDS:
            raise SpapInputError(f"Calibration seeds must be a whole number from 1 to {MAX_SEEDS}, not "
                                 f"{str(self.seeds)[:20]}.")

    @property
    def cache_key(self) -> str:
        repeats = f"|seeds={self.seeds}" if self.seeds > 1 else ""
        recovery = f"|recovery={asdict(self.recovery)}" if self.recovery.enabled else ""
        return (f"{asdict(self.settings)}|seed={self.seed}|budget={self.budget}|{self.data.cache_key}{repeats}"
                f"{recovery}")

    def seed_requests(self) -> list[RunRequest]:
        """The one-seed runs this request repeats: its own seed first, then the next ones."""
        return [replace(self, seed=self.seed + offset, seeds=1) for offset in range(self.seeds)]

    @property
    def spec(self) -> RunSpec:
        """The request as the run API takes it: a copy of the model is pruned (the app prunes one
        model many times) and nothing is saved there (save_outcome saves the record under the
        results root)."""
        data = self.data
        return RunSpec(settings=self.settings, nsamples=data.nsamples, seqlen=data.seqlen, seed=self.seed,
                       eval_len=data.eval_len, eval_windows=data.eval_windows or None, batch_size=data.batch_size,
                       budget=self.budget, recovery=self.recovery)


_weights_lock = threading.RLock()  # a session's weights go to disk while its page may be loading them back


def _transformers_model(model: torch.nn.Module) -> PreTrainedModel:
    """A run's pruned model as what it is: PruneResult types it as any module, but prune_model copies
    the loaded transformers model and load_pruned returns one."""
    return cast(PreTrainedModel, model)


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
    # while the pruned weights are out of memory: their folder, dtype and device
    spilled: tuple[Path, torch.dtype, torch.device] | None = None
    # a saved run's pruned weights, as the tensors that differ from the dense model (restore_model)
    stored_weights: Path | None = None

    @property
    def has_model(self) -> bool:
        """Whether the pruned weights are at hand (in memory, or on disk to be loaded back)."""
        return self.result.model is not None or self.spilled is not None

    @property
    def weights_missing(self) -> str | None:
        """Why this run's pruned weights cannot be brought back, as a sentence without its full stop
        (a page adds what to do); None when they are at hand or kept with its saved run."""
        if self.has_model or self.stored_weights is not None:
            return None
        note = self.record.get(WEIGHTS_RECORD_KEY)
        removed_at, cap = (note.get("removed_at"), note.get("cap_bytes")) if isinstance(note, dict) else (None, None)
        if isinstance(removed_at, (int, float)) and isinstance(cap, int):  # run_index made room for newer runs
            day = time.strftime("%Y-%m-%d", time.localtime(removed_at))
            return (f"This run's pruned weights were removed on {day} to keep all saved runs within the "
                    f"{cap / 2**20:.0f} MB this server allows; its record and charts are kept")
        reason = note.get("why_not") if isinstance(note, dict) else None
        if not isinstance(reason, str) or not reason:
            reason = ("its weights file is no longer in its folder" if isinstance(note, dict) and note.get("file")
                      else "it was saved before saved runs kept their weights")
        return f"This run was saved without its pruned weights ({reason})"

    def restore_model(self, loaded: LoadedModel) -> None:
        """Bring back the pruned weights kept with the saved run, rebuilt from `loaded` (the dense
        model the run pruned), with its tokenizer for the downloads; nothing to do when they are at
        hand. Raises SpapInputError when `loaded` is not the run's model or the file is damaged."""
        with _weights_lock:
            if self.has_model or self.stored_weights is None:
                return
            self.result.model = read_pruned_weights(self.stored_weights, loaded.model)
            self.tokenizer = loaded.tokenizer

    @property
    def in_memory(self) -> bool:
        return self.result.model is not None

    def spill(self, folder: Path) -> None:
        """Write the pruned model into `folder` (replacing what an earlier outcome of the session
        left there) and let go of its weights: the session registry calls this for sessions past
        the few whose weights stay in memory (spap_service.sessions)."""
        with _weights_lock:
            if self.result.model is None:
                return
            parameter = next(self.result.model.parameters())
            shutil.rmtree(folder, ignore_errors=True)
            save_pruned(_transformers_model(self.result.model), self.tokenizer, folder)
            self.spilled, self.result.model = (Path(folder), parameter.dtype, parameter.device), None

    def pruned_model(self) -> PreTrainedModel:
        """The pruned model, loaded back from where `spill` wrote it when it is not in memory."""
        with _weights_lock:
            if self.result.model is None:
                if self.spilled is None:
                    raise ValueError("this run's pruned weights were not kept (a run reloaded from its record)")
                self.result.model = load_pruned(*self.spilled)
            return _transformers_model(self.result.model)

    @property
    def file_stem(self) -> str:
        """What its downloads are named after: its saved folder (time, method, sparsity, a random
        suffix; the name a results link carries), else its method and sparsity."""
        if self.saved_to is not None:
            return f"spap-run-{self.saved_to.name}"
        return f"spap-run-{self.request.settings.method}-{self.request.settings.sparsity:.2f}"


class JobRunProgress(RunProgress):
    """A run's progress in its job's snapshot: layer i of L and ρ iteration k of K while it
    prunes, then the batches of the pruned perplexity and, with a recovery, its steps."""

    def __init__(self, loaded: LoadedModel, settings: PruneSettings, recovery: RecoverySettings,
                 progress: ProgressReporter) -> None:
        self.method = settings.method
        self.recovery_steps = recovery.steps if recovery.enabled else 0
        self.iterations = settings.implementation.trace_length(settings.options)
        self.n_layers = len(loaded.family.decoder_layers(loaded.model))
        self.progress = progress
        self._report_pruned_batch = batch_reporter(progress, "pruned perplexity")

    @contextmanager
    def experiment(self, windows: int) -> Iterator[None]:
        self.progress.update(phase=f"pruning ({self.method})", layer=1, n_layers=self.n_layers,
                             iteration=0, n_iterations=self.iterations, batch=0, n_batches=0,
                             recovery=(), recovery_steps=self.recovery_steps)
        yield

    def layer(self, done: int, total: int) -> None:
        self.progress.update(layer=min(done + 1, total), n_layers=total,
                             iteration=0 if done < total else self.iterations)

    def step(self, step: MethodStep) -> None:
        self.progress.update(layer=step.layer + 1, iteration=step.iteration)

    def pruned_batch(self, done: int, total: int) -> None:
        self._report_pruned_batch(done, total)
        self.progress.update(batch=done, n_batches=total)

    def recovery_step(self, step: RecoveryStep) -> None:
        """Every step so far in the snapshot, so the page draws the whole curve; a recovery's first
        step starts a new one (each calibration seed's run recovers on its own)."""
        done = self.progress.current.recovery if step.step > 1 else ()
        # the batches counted from here on are the perplexity's after the recovery
        self.progress.update(phase="recovery after pruning", recovery=(*done, step), batch=0)


def run_request(loaded: LoadedModel, request: RunRequest, progress: ProgressReporter,
                cancel: threading.Event, keep_cancelled_recovery: bool = False) -> RunResult:
    """The request through the run API on a copy of the model, with the token windows and the dense
    perplexity this process keeps per model and text (spap_service.data).

    A cancel during the recovery ends the run API's run with the pruned model as it was before it.
    Only a caller that shows that outcome as such keeps it (`keep_cancelled_recovery`); for any other
    (a sweep's point, one of several calibration seeds) the cancel discards the run
    (PruningCancelled), as it does anywhere else, so no table mixes recovered and unrecovered models."""
    data = prepare_data(loaded, request.data, request.seed)
    started = time.perf_counter()
    dense, dense_cached = dense_perplexity(loaded, request.data, data.evaluation, progress, cancel)
    measured = MeasuredDense(dense, seconds=0.0 if dense_cached else time.perf_counter() - started,
                             cached=dense_cached)
    result = run(loaded, request.spec, data, dense=measured,
                 progress=JobRunProgress(loaded, request.settings, request.recovery, progress),
                 cancel=cancel)
    stopped = result.experiment.recovery_cancelled
    if stopped is not None and not keep_cancelled_recovery:
        raise PruningCancelled(f"Cancelled during the recovery after pruning, after {stopped.steps_done} of "
                               f"{stopped.settings.steps} steps.")
    return result


def run_pruning(loaded: LoadedModel, request: RunRequest, progress: ProgressReporter,
                cancel: threading.Event, owner: str = "", save: bool = True) -> RunOutcome:
    """Prune a copy of the model and evaluate dense and pruned perplexity on the same windows.
    `owner` (the browser session) is saved with the run, so each session lists its own runs; a
    Ray worker runs it with `save` off and the app saves what it sends back (save_outcome).

    A cancel during the recovery of a run of one calibration seed finishes it with the pruned model
    as it was before recovery (its record's `recovery_cancelled`). Over several seeds such a
    cancel, in any seed's recovery, cancels the whole run (PruningCancelled), as a cancel anywhere
    else does: a perplexity over seeds of which some were recovered and one was not would describe
    no model."""
    progress.update(phase="tokenizing calibration and evaluation text")
    own, *repeats = request.seed_requests()
    result = run_request(loaded, own, progress, cancel, keep_cancelled_recovery=not repeats)
    experiment = result.experiment
    window_nll_by_seed = [experiment.pruned.window_nll]
    for index, repeat in enumerate(repeats, start=2):  # the other seeds keep their perplexity only
        progress.update(phase=f"calibration seed {index} of {request.seeds} (seed {repeat.seed})")
        window_nll_by_seed.append(run_request(loaded, repeat, progress, cancel).experiment.pruned.window_nll)
    finished_at = time.time()
    repeated = {} if not repeats else seed_fields([seeded.seed for seeded in request.seed_requests()],
                                                  window_nll_by_seed)
    record = result.record(model_key=model_key(loaded), data=request.data.to_dict(), finished_at=finished_at,
                           owner=owner, **repeated)
    outcome = RunOutcome(request=request, model_key=model_key(loaded), tokenizer=loaded.tokenizer,
                         result=experiment.result, dense=experiment.dense, pruned=experiment.pruned, record=record,
                         finished_at=finished_at)
    return save_outcome(outcome, loaded.model) if save else outcome


def check_results_apart(source: str, data: DataSpec) -> None:
    """Refuse, before it is queued, a run whose record would be written inside what it reads: the
    results folder (where every run's record goes) must not be, nor lie inside, the model's files
    or a text file. Raises SpapInputError."""
    inputs = {f"model {name}": path for name, path in model_files(*model_source(source)).items()}
    inputs.update({f"{purpose} text": Path(choice.path) for purpose, choice in
                   (("calibration", data.calibration), ("evaluation", data.evaluation)) if choice.kind == "file"})
    root = results_root().expanduser().resolve()
    for name, path in inputs.items():
        if overlap(root, path.expanduser().resolve()) in ("is", "lies inside"):
            raise SpapInputError(f"This server keeps its runs in {root}, which is inside the {name} {path}; runs "
                                 f"may not be written into what they read: choose a {name} elsewhere, or start the "
                                 f"app with {RESULTS_DIR_ENV} set apart from it.")


def save_outcome(outcome: RunOutcome, dense: PreTrainedModel) -> RunOutcome:
    """Write the run under the results root as it finishes (a crash or restart of the app loses at
    most the run in progress): its record and, where they fit, its pruned weights as the tensors
    that differ from `dense`, all in one staged folder that appears whole or not at all. Then keep
    the saved runs within the server's caps (spap_service.run_index: past the byte cap the oldest
    runs' weights go first, then, as past the other caps, the oldest runs of a session)."""
    root, caps = results_root(), server_limits().saved_runs
    target = new_run_directory(root, outcome.record)
    with staged_directory(target) as staging:
        write_run(staging, outcome.record, outcome.result)
        kept = _keep_weights(staging, outcome, dense, caps.max_bytes)
    outcome.saved_to, outcome.stored_weights = target, target / WEIGHTS_FILE if kept else None
    enforce_caps(root, caps, target.name)
    return outcome


def _keep_weights(folder: Path, outcome: RunOutcome, dense: PreTrainedModel, max_bytes: int | None) -> bool:
    """Write the run's pruned weights into its folder when they can be compared with the dense model
    and fit, with the run's other files, within the byte cap of all saved runs (a run larger than
    the cap would stay above it, as the run just saved is never removed). The record says which,
    and why not."""
    if is_dispatched(dense):
        return _without_weights(folder, outcome, "its model was offloaded, so its layers were not in memory to "
                                                 "compare with the pruned ones")
    difference = pruned_difference(dense, outcome.pruned_model())
    needed = folder_bytes(folder) + difference.bytes
    if max_bytes is not None and needed > max_bytes:
        return _without_weights(folder, outcome, f"with them it would take {needed / 2**20:.1f} MB, more than the "
                                                 f"{max_bytes / 2**20:.0f} MB this server keeps for all saved runs")
    outcome.record[WEIGHTS_RECORD_KEY] = {"file": write_pruned_weights(folder, difference).name,
                                          "bytes": difference.bytes}
    write_record(folder, outcome.record)
    return True


def _without_weights(folder: Path, outcome: RunOutcome, why_not: str) -> bool:
    """Note in the run's record why its pruned weights were not kept (the pages quote it)."""
    outcome.record[WEIGHTS_RECORD_KEY] = {"file": None, "why_not": why_not}
    write_record(folder, outcome.record)
    return False


def _stored_perplexity(record: dict, key: str) -> PerplexityResult:
    tokens = record["eval_tokens"]
    return PerplexityResult(perplexity=record[key], nll=math.log(record[key]) * tokens, tokens=tokens,
                            windows=record["eval_windows"], seqlen=record["eval_len"],
                            window_nll=tuple(record[WINDOW_NLL_KEYS[key]]))


@dataclass(frozen=True)
class SavedRuns:
    """The readable saved runs as a table, and the fault of each run folder that could not be read
    (skipped, so one corrupt record never hides the others)."""

    table: pd.DataFrame
    unreadable: list[UnreadableRunError]


def saved_runs(owner: str | None = None) -> SavedRuns:
    """The finished runs in the results folder, newest first, one row each with its folder name
    (`run`); only those `owner` made when given. The pruned perplexity (its own seed's) is a number,
    to sort by, with its 95% interval beside it as text ("[41.90, 43.57]", "no interval" for a run
    saved without one) and as numbers for a download, the pruned perplexity before its recovery (NaN
    for a run without one), and the calibration seeds the run was repeated over. Read from the
    folder's index, which re-reads only the records that changed."""
    runs, unreadable = indexed_runs(results_root())
    rows = []
    for saved in runs:
        if owner is not None and saved.owner != owner:
            continue
        interval, seeds = saved.summary.get("ppl_ci95"), saved.summary.get("seeds")
        before = saved.summary.get("ppl_before_recovery")
        rows.append({"finished": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved.finished_at)),
                     "method": saved.summary["method"], "sparsity": saved.summary["sparsity"],
                     "ppl dense": saved.summary["ppl_dense"], "ppl pruned": saved.summary["ppl"],
                     "95% interval": interval_text(interval),
                     "ppl before recovery": math.nan if before is None else float(before),
                     "seeds": len(seeds) if isinstance(seeds, list) else 1,
                     "model": str(saved.summary.get("model") or ""), "run": saved.name,
                     "ppl_ci95_low": interval[0] if interval else math.nan,
                     "ppl_ci95_high": interval[1] if interval else math.nan})
    return SavedRuns(pd.DataFrame(rows, columns=SAVED_RUN_COLUMNS), unreadable)


SAVED_RUN_COLUMNS = ["finished", "method", "sparsity", "ppl dense", "ppl pruned", "95% interval", "ppl before recovery",
                     "seeds", "model", "run", "ppl_ci95_low", "ppl_ci95_high"]
SHOWN_SAVED_RUN_COLUMNS = SAVED_RUN_COLUMNS[:-2]  # the bounds as numbers are for downloads


def saved_run_folder(name: str) -> Path | None:
    """The results folder of the saved run called `name`, or None: only a name listed in the
    results root is accepted, so a shared link can never point the app at another path."""
    runs, _ = indexed_runs(results_root())
    return next((results_root() / run.name for run in runs if run.name == name), None)


def load_saved_run(folder: str | Path) -> RunOutcome:
    """A finished run as it was saved; its pruned weights, when kept, come back with
    `RunOutcome.restore_model` from the dense model it pruned."""
    record, result = read_run(folder)
    weights = Path(folder) / WEIGHTS_FILE
    with record_faults(Path(folder) / "results.json"):  # the fields only the app's runs carry
        seeds = record.get("seeds")
        request = RunRequest(settings=result.settings, seed=int(record["seed"]),
                             data=DataSpec.from_dict(record["data"]),
                             seeds=len(seeds) if isinstance(seeds, list) and 1 <= len(seeds) <= MAX_SEEDS else 1,
                             recovery=_recovery_settings(record))
        return RunOutcome(request=request, model_key=str(record["model_key"]), tokenizer=None, result=result,
                          dense=_stored_perplexity(record, "ppl_dense"), pruned=_stored_perplexity(record, "ppl"),
                          record=record, finished_at=float(record["finished_at"]), saved_to=Path(folder),
                          stored_weights=weights if weights.is_file() else None)


def _recovery_settings(record: dict) -> RecoverySettings:
    """The recovery a saved run asked for: the one it did, or the one it was cancelled in (the run
    then shows its model unrecovered, and its form asks for that recovery again); none without either."""
    asked = record["recovery"] or record.get("recovery_cancelled")
    return RecoverySettings(**asked["settings"]) if asked else RecoverySettings()


def pruned_model_zip(outcome: RunOutcome) -> bytes:
    """The pruned model as save_pruned writes it (safetensors + tokenizer + config), zipped."""
    with tempfile.TemporaryDirectory(prefix="spap-pruned-") as folder:
        save_pruned(outcome.pruned_model(), outcome.tokenizer, folder)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(Path(folder).iterdir()):
                archive.write(file, arcname=f"pruned-model/{file.name}")
        return buffer.getvalue()
