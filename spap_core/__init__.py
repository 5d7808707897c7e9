"""spap_core: structured pruning of language models (MLP channels and attention heads) with SPAP
and its baselines, for eleven model families.

    from pathlib import Path

    from spap_core import PruneSettings, RunOutput, RunSpec, RunTexts, load_model, read_run, run, text_from_file

    loaded = load_model("smollm2")
    spec = RunSpec(PruneSettings(method="spap", sparsity=0.3), nsamples=16, seqlen=512, seed=0,
                   eval_len=512, eval_windows=8, batch_size=4, output=RunOutput(Path("pruned")))
    texts = RunTexts(text_from_file("calibration.txt"), text_from_file("evaluation.txt"))
    result = run(loaded, spec, texts)  # plan, prune, evaluate, save the model and its record
    print(result.experiment.dense.perplexity, result.experiment.pruned.perplexity)
    record, layers = read_run("pruned")  # the record and the kept channels, without the weights

The names below load on first use (importing torch and transformers takes seconds), so
`import spap_core` and `python -m spap_core --help` stay quick. The library never imports
streamlit: the app in ``pages/`` renders what this package returns.
"""

from __future__ import annotations

import importlib
from typing import Any

# the module that defines them → the public names
_MODULES = {
    "spap_core.errors": ("PruningCancelled", "SourceUnavailableError", "SpapInputError", "NumericalError",
                         "UnreadableRunError"),
    "spap_core.models.loading": ("LoadedModel", "load_model", "Placement"),
    "spap_core.data.texts": ("TextSource", "text_from_file", "resolve_text", "calibration_windows",
                             "evaluation_windows"),
    "spap_core.methods.registry": ("PruneSettings", "METHODS"),
    "spap_core.pipeline.walk": ("prune_model", "PruneResult"),
    "spap_core.pipeline.experiment": ("run_experiment", "Experiment"),
    "spap_core.runner.execute": ("run", "RunResult"),
    "spap_core.runner.spec": ("RunSpec", "RunTexts", "RunData", "RunOutput", "ParameterBudget", "ZeroShotRequest"),
    "spap_core.runner.progress": ("RunProgress",),
    "spap_core.evaluation.perplexity": ("perplexity", "PerplexityResult"),
    "spap_core.models.shrink": ("save_pruned", "load_pruned"),
    "spap_core.storage.runs": ("write_run", "read_run"),
    "spap_core.recovery.settings": ("RecoverySettings",),
    "spap_core.recovery.loop": ("recover", "RecoveryStep", "RecoveryResult"),
    "spap_core.evaluation.latency": ("measure_latencies", "latency_ratios"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spap_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
