"""spap_core: structured pruning of language models (MLP channels and attention heads) with SPAP
and its baselines, for eleven model families.

    from spap_core import (PruneSettings, calibration_windows, evaluation_windows, load_model,
                           run_experiment, save_pruned, text_from_file)

    loaded = load_model("smollm2")
    calibration = calibration_windows(loaded.tokenizer, text_from_file("calibration.txt"), 16, 512, seed=0)
    evaluation = evaluation_windows(loaded.tokenizer, text_from_file("evaluation.txt"), 512, 8)
    experiment = run_experiment(loaded, calibration, evaluation, PruneSettings(method="spap", sparsity=0.3))
    print(experiment.dense.perplexity, experiment.pruned.perplexity)
    save_pruned(experiment.result.model, loaded.tokenizer, "pruned/")  # plain transformers loads it

The names below load on first use (importing torch and transformers takes seconds), so
`import spap_core` and `python -m spap_core --help` stay quick. The library never imports
streamlit: the app in ``pages/`` renders what this package returns.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name → the module that defines it
_EXPORTS = {
    "PruningCancelled": "spap_core.errors", "SourceUnavailableError": "spap_core.errors",
    "SpapInputError": "spap_core.errors", "NumericalError": "spap_core.errors",
    "UnreadableRunError": "spap_core.errors",
    "LoadedModel": "spap_core.models", "load_model": "spap_core.models", "Placement": "spap_core.models",
    "TextSource": "spap_core.data", "text_from_file": "spap_core.data", "resolve_text": "spap_core.data",
    "calibration_windows": "spap_core.data", "evaluation_windows": "spap_core.data",
    "PruneSettings": "spap_core.methods.registry", "METHODS": "spap_core.methods.registry",
    "prune_model": "spap_core.prune", "PruneResult": "spap_core.prune",
    "run_experiment": "spap_core.experiment", "Experiment": "spap_core.experiment",
    "perplexity": "spap_core.evaluate", "PerplexityResult": "spap_core.evaluate",
    "save_pruned": "spap_core.shrink", "load_pruned": "spap_core.shrink",
    "write_run": "spap_core.runs", "read_run": "spap_core.runs",
    "measure_latencies": "spap_core.latency", "latency_ratios": "spap_core.latency",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spap_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
