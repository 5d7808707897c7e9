"""What every benchmark shares: one model load, fixed token windows, settings overrides written
as `penalty.iterations=10`, and a Markdown header that records machine and protocol."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from spap_core.data import calibration_windows, evaluation_windows, text_from_file
from spap_core.evaluate import perplexity
from spap_core.methods.registry import PruneSettings
from spap_core.models import LoadedModel, load_model
from spap_core.prune import prune_model

DATA = Path(os.environ.get("SPAP_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
CALIB_FILE = DATA / "wikitext-2" / "wiki.valid.tokens"
EVAL_FILES = {"wikitext2": DATA / "wikitext-2" / "wiki.test.joined.txt",
              "shakespeare": DATA / "tinyshakespeare" / "input.txt"}


@dataclass
class Protocol:
    loaded: LoadedModel
    calibration: torch.Tensor
    eval_sets: dict[str, torch.Tensor]
    dense_ppl: dict[str, float]
    description: str


def load_protocol(model: str, nsamples: int, seqlen: int, eval_windows: int, seed: int,
                  eval_names: list[str]) -> Protocol:
    loaded = load_model(model)
    calibration = calibration_windows(loaded.tokenizer, text_from_file(CALIB_FILE), nsamples, seqlen, seed)
    eval_sets = {name: evaluation_windows(loaded.tokenizer, text_from_file(EVAL_FILES[name]), seqlen, eval_windows)
                 for name in eval_names}
    dense = {name: perplexity(loaded.model, windows).perplexity for name, windows in eval_sets.items()}
    description = (
        f"Model: {loaded.description}. Calibration: {nsamples} × {seqlen} tokens of {CALIB_FILE.name}, seed {seed}. "
        f"Evaluation: first {eval_windows} × {seqlen}-token windows of " + ", ".join(EVAL_FILES[n].name for n in eval_names)
        + f". Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, device {loaded.device}."
    )
    return Protocol(loaded, calibration, eval_sets, dense, description)


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def with_overrides(settings: PruneSettings, overrides: dict[str, object]) -> PruneSettings:
    """Apply `group.field=value` (or `field=value` on PruneSettings itself) overrides."""
    for key, value in overrides.items():
        group, _, name = key.rpartition(".")
        if group:
            settings = replace(settings, **{group: replace(getattr(settings, group), **{name: value})})
        else:
            settings = replace(settings, **{name: value})
    return settings


def variant_settings(variant: str, sparsity: float) -> tuple[str, str, PruneSettings]:
    """'label:overrides' → (label, overrides, the settings at `sparsity` with them applied)."""
    label, _, spec = variant.rpartition(":")
    return label, spec, with_overrides(PruneSettings(sparsity=sparsity), parse_overrides(spec))


def parse_overrides(spec: str) -> dict[str, object]:
    """'penalty.iterations=10,refit.bias=false' → {'penalty.iterations': 10, 'refit.bias': False}."""
    pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
    return {key.strip(): parse_value(value.strip()) for key, value in pairs}


def measure(protocol: Protocol, settings: PruneSettings, seed: int) -> dict:
    """Prune with `settings`, then perplexity on every evaluation set, the summed layer error
    relative to the dense output energy, and the time split."""
    started = time.perf_counter()
    result = prune_model(protocol.loaded, protocol.calibration, settings, seed=seed)
    seconds = time.perf_counter() - started
    ppl = {name: perplexity(result.model, windows).perplexity for name, windows in protocol.eval_sets.items()}
    return {"ppl": ppl, "relative_error": result.relative_error, "prune_seconds": seconds,
            "timings": result.timings, "params_after": result.params_after}
