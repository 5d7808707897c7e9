"""What a run is calibrated and evaluated on: the text choices (a local file, WikiText-2 from the
hub, an upload), their sizes, and the token windows and dense perplexities every job reuses (kept in
small thread-safe caches, because the worker thread cannot use streamlit's)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spap_core.data.texts import TextSource, calibration_windows, evaluation_windows, resolve_text, text_from_file
from spap_core.evaluation.perplexity import PerplexityResult, perplexity
from spap_core.models.loading import LoadedModel
from spap_core.runner.spec import RunData
from spap_service.cache import BoundedCache
from spap_service.jobs import ProgressReporter


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
            try:  # an unreadable or impossible path gets a key too; resolving the text then says why
                file = Path(self.path).expanduser().resolve()
                stamp = file.stat().st_mtime_ns if file.is_file() else 0
            except OSError:
                return f"file:{self.path}:unreadable"
            return f"file:{file}:{stamp}"
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



_dense_perplexities = BoundedCache(max_entries=32)
_token_windows = BoundedCache(max_entries=16)


def model_key(loaded: LoadedModel) -> str:
    """Identifies a loaded model in caches and results: source, device and dtype."""
    return f"{loaded.source}|{loaded.device}|{next(loaded.model.parameters()).dtype}"


def prepare_data(loaded: LoadedModel, data: DataSpec, seed: int) -> RunData:
    """Token windows for calibration and evaluation (memoised: tokenizing WikiText takes seconds)."""
    key = (model_key(loaded), data.cache_key, seed)
    cached = _token_windows.get(key)
    if cached is not None:
        return cached
    calibration_source = data.calibration.resolve("calibration")
    evaluation_source = data.evaluation.resolve("evaluation")
    prepared = RunData(
        calibration_source=calibration_source,
        evaluation_source=evaluation_source,
        calibration=calibration_windows(loaded.tokenizer, calibration_source, data.nsamples, data.seqlen, seed),
        evaluation=evaluation_windows(loaded.tokenizer, evaluation_source, data.eval_len, data.eval_windows or None),
    )
    _token_windows.put(key, prepared)
    return prepared


def batch_reporter(progress: ProgressReporter, what: str) -> Callable[[int, int], None]:
    return lambda done, total: progress.update(phase=f"{what}: batch {done} of {total}")


def dense_perplexity_known(loaded: LoadedModel, data: DataSpec) -> bool:
    """Whether the dense perplexity of this model on this evaluation set is cached (a run then skips it)."""
    return _dense_perplexities.get((model_key(loaded), data.evaluation_key)) is not None


def dense_perplexity(loaded: LoadedModel, data: DataSpec, windows: torch.Tensor, progress: ProgressReporter,
                     cancel: threading.Event) -> tuple[PerplexityResult, bool]:
    """Perplexity of the unpruned model, computed once per model and evaluation set.
    Returns (result, whether it came from the cache)."""
    key = (model_key(loaded), data.evaluation_key)
    cached = _dense_perplexities.get(key)
    if cached is not None:
        return cached, True
    result = perplexity(loaded.model, windows, batch_size=data.batch_size,
                        on_batch=batch_reporter(progress, "dense perplexity"), cancel=cancel)
    _dense_perplexities.put(key, result)
    return result, False
