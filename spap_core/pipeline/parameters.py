"""Every parameter of a pruning run, collected in one schema: the run's own (the sparsity), each
method's own (declared on its class: SPAP's penalty path and recovery, OBS's block and damping,
FLAP's bias), each layer allocation strategy's own (declared on its class: the global strategy's
maximum deviation and outlier factor) and the calibration size; then the recovery after pruning
(its own settings type, spap_core.recovery.settings), the sizes of the evaluation and of a latency
measurement, and the groups the forms and the CLI's help show them in. The CLI's flags, the
app's forms and share links, the settings summary, the sensitivity scan and the benchmarks'
override parser are all generated from here (spap_core.schema.Parameter is one declaration).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from spap_core.errors import SpapInputError
from spap_core.methods.allocation import ALLOCATION_STRATEGIES
from spap_core.methods.base import PruningMethod
from spap_core.methods.reconstruction import reconstruction_name
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.recovery.settings import RECOVERY_PARAMETERS, RecoverySettings
from spap_core.schema import ALLOCATION_GROUPS, DATA_GROUPS, RECOVERY_GROUPS, RUN_GROUPS, Parameter

__all__ = ["BY_KEY", "CALIBRATION_PARAMETERS", "DATA_PARAMETERS", "GROUPS", "LATENCY_PARAMETERS", "PARAMETERS",
           "RECOVERY_PARAMETERS", "SCANNED", "SETTINGS_PARAMETERS", "Parameter", "allocation_parameters", "changed",
           "describe", "method_parameters", "parameter", "recovery_values", "recovery_with_values",
           "settings_values", "with_values"]

SPARSITY = Parameter("sparsity", "sparsity", "Sparsity",
                     "Fraction λ/n of MLP channels removed from every layer (uniform).",
                     float, "run", ("--sparsity",), path="sparsity", low=0.05, high=0.95, step=0.05, slider=True,
                     sweep=(0.1, 0.6), lead=True)
HEAD_SPARSITY = Parameter(
    "head_sparsity", "head sparsity", "Head sparsity",
    "Share of every layer's attention heads removed too (0 = heads untouched), rounded to the nearest layout the "
    "model's grouped-query attention can hold: the same KV groups × query heads in every layer.",
    float, "run", ("--head-sparsity",), path="head_sparsity", low=0.0, high=0.9, step=0.05, slider=True, lead=True)
CALIBRATION_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("nsamples", "samples", "Samples", "Random windows of the calibration text.",
              int, "calibration", ("--nsamples",), low=1, high=1024, step=1, sweep=(2, 32)),
    Parameter("seqlen", "tokens per sample", "Tokens per sample",
              "Length of each window; samples × tokens = calibration tokens.",
              int, "calibration", ("--seqlen",), low=8, high=8192, step=1),
    Parameter("seed", "seed", "Seed", "Chooses the calibration windows (and the Adam batches).",
              int, "calibration", ("--seed",), low=0, high=2**31 - 1, step=1),
)
PARAMETERS: tuple[Parameter, ...] = (
    SPARSITY,
    HEAD_SPARSITY,
    *(declared.for_method(name) for name, method in METHODS.items() for declared in method.parameters),
    *(declared.for_allocation(name) for name, strategy in ALLOCATION_STRATEGIES.items()
      for declared in strategy.parameters),
    *CALIBRATION_PARAMETERS,
)

# Sizes of the evaluation and of a latency measurement: not settings of the pruning (so neither
# on the Run form nor in its share link), but bounded the same way wherever they are typed: the
# CLI's flags and the Model & data and Latency pages read their ranges from here.
DATA_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("eval_len", "evaluation window", "Tokens per evaluation window", "Evaluation window length (tokens).",
              int, "evaluation", ("--eval-len",), low=8, high=8192, step=1),
    Parameter("eval_windows", "evaluation windows", "Evaluation windows (first W; 0 = the whole text)",
              "First W windows of the evaluation text; 0 = the whole text.",
              int, "evaluation", ("--eval-windows",), low=0, high=100_000, step=1),
    Parameter("batch_size", "batch", "Windows per forward pass (lower it if memory runs out)",
              "Windows per forward pass.", int, "evaluation", ("--batch-size",), low=1, high=256, step=1),
)
LATENCY_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("prefill_tokens", "prefill window", "Prefill window (tokens)", "Prefill window length (tokens).",
              int, "latency", ("--seqlen",), low=8, high=8192, step=1),
    Parameter("decode_tokens", "decoded tokens", "Decoded tokens", "Tokens generated one at a time.",
              int, "latency", ("--decode-tokens",), low=1, high=512, step=1),
    Parameter("repeats", "repeats", "Repeats (timed)", "Timed repetitions of each measurement.",
              int, "latency", ("--repeats",), low=1, high=50, step=1),
    Parameter("warmup", "warm-up runs", "Warm-up runs (not timed)", "Untimed runs before the timed ones.",
              int, "latency", ("--warmup",), low=0, high=20, step=1),
)


def parameter_groups(methods: Iterable[PruningMethod]) -> dict[str, str]:
    """Every group's title by its key, in the order the forms and the CLI's help show them: the
    run's own, each method's own (PruningMethod.groups, in the methods' order), the layer
    allocation strategies', then the data's and the measurements'."""
    return {**RUN_GROUPS, **{key: title for method in methods for key, title in method.groups.items()},
            **ALLOCATION_GROUPS, **RECOVERY_GROUPS, **DATA_GROUPS}


GROUPS = parameter_groups(METHODS.values())
if undeclared := ({p.group for p in PARAMETERS + RECOVERY_PARAMETERS + DATA_PARAMETERS + LATENCY_PARAMETERS}
                  - GROUPS.keys()):
    raise RuntimeError(f"parameters name groups no method declares: {', '.join(sorted(undeclared))}")
BY_KEY = {parameter.key: parameter for parameter in PARAMETERS}
if len({p.key for p in PARAMETERS + RECOVERY_PARAMETERS}) != len(PARAMETERS + RECOVERY_PARAMETERS):
    raise RuntimeError("two parameters declare the same key; a share link or bench override would be ambiguous")
SETTINGS_PARAMETERS = tuple(p for p in PARAMETERS if p.path)
SCANNED = tuple(p for p in PARAMETERS if p.sweep is not None)


def method_parameters(method: str) -> tuple[Parameter, ...]:
    """The parameters a run of `method` takes under the uniform allocation: the run's own, the
    method's, the calibration's."""
    return tuple(p for p in PARAMETERS if p.method in (None, method) and p.allocation is None)


def allocation_parameters(allocation: str) -> tuple[Parameter, ...]:
    """The parameters of one layer allocation strategy (none for most)."""
    return tuple(p for p in PARAMETERS if p.allocation == allocation)


def parameter(key: str) -> Parameter:
    if key not in BY_KEY:
        raise SpapInputError(f"Unknown hyperparameter '{key}': choose one of {', '.join(BY_KEY)}.")
    return BY_KEY[key]


def with_values(settings: PruneSettings, values: dict[str, Any]) -> PruneSettings:
    """`settings` with every `key: value` applied (keys of settings parameters only; a key of
    another method than settings.method, or of another strategy than settings.allocation, is refused)."""
    for key, value in values.items():
        settings = parameter(key).apply(settings, value)
    return settings


def recovery_values(settings: RecoverySettings) -> dict[str, Any]:
    """Every recovery parameter's value in `settings` by its key (a share link's content)."""
    return {p.key: p.read(settings) for p in RECOVERY_PARAMETERS}


def recovery_with_values(values: dict[str, Any], settings: RecoverySettings | None = None) -> RecoverySettings:
    """`settings` (the defaults when None) with every recovery `key: value` applied, each checked by
    its declaration (a key that is no recovery parameter's is refused)."""
    by_key = {p.key: p for p in RECOVERY_PARAMETERS}
    settings = settings or RecoverySettings()
    for key, value in values.items():
        if key not in by_key:
            raise SpapInputError(f"Unknown recovery setting '{key}': choose one of {', '.join(by_key)}.")
        settings = by_key[key].apply(settings, value)
    return settings


def settings_values(settings: PruneSettings) -> dict[str, Any]:
    """Every settings parameter's value in `settings` that its method and its allocation strategy
    have (a share link's content)."""
    return {p.key: p.read(settings) for p in _of_settings(settings)}


def _of_settings(settings: PruneSettings) -> tuple[Parameter, ...]:
    """The parameters `settings` has: the run's, its method's, then its allocation strategy's."""
    return tuple(p for p in SETTINGS_PARAMETERS
                 if p.method in (None, settings.method) and p.allocation in (None, settings.allocation))


def _allocation_changes(settings: PruneSettings, reference: PruneSettings,
                        omit: frozenset[str] | set[str]) -> list[str]:
    """The phrases of the allocation strategy's own parameters whose values in `settings` differ
    from `reference`'s (a reference spread by another strategy counts as that strategy's defaults)."""
    if reference.allocation != settings.allocation:
        reference = replace(settings, allocation_options=None)
    return [p.phrase(p.read(settings)) for p in allocation_parameters(settings.allocation)
            if p.key not in omit and p.read(settings) != p.read(reference)]


def changed(settings: PruneSettings, reference: PruneSettings,
            omit: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """The phrases of `settings`' parameters whose values differ from `reference`'s (a reference of
    another method counts as that method's defaults), then its weight update and allocation when
    they differ: what a label must say so a result can be told from one made at the defaults."""
    if reference.method != settings.method:
        reference = PruneSettings(method=settings.method, sparsity=reference.sparsity)
    parts = [p.phrase(p.read(settings)) for p in _of_settings(settings)
             if p.allocation is None and p.key not in omit and p.read(settings) != p.read(reference)]
    if settings.reconstruction != reference.reconstruction and "reconstruction" not in omit:
        parts.append(f"weight update {reconstruction_name(settings.reconstruction)}")
    if settings.allocation != reference.allocation and "allocation" not in omit:
        parts.append(f"{settings.allocation} allocation")
    return parts + _allocation_changes(settings, reference, omit)


def describe(settings: PruneSettings, omit: frozenset[str] | set[str] = frozenset()) -> str:
    """One line with the method and every parameter value it has, except the keys in `omit`; the
    allocation strategy and its own parameters only where they differ from the defaults (the
    uniform allocation; the strategy's own defaults)."""
    parts = [] if "method" in omit else [f"method {settings.method}"]
    for p in _of_settings(settings):
        if p.key in omit or p.allocation is not None:
            continue
        parts.append(p.phrase(p.read(settings)))
    if settings.reconstruction is not None and "reconstruction" not in omit:
        parts.append(f"weight update {settings.reconstruction.name}")
    if settings.allocation != "uniform" and "allocation" not in omit:
        parts.append(f"{settings.allocation} allocation")
    return ", ".join(parts + _allocation_changes(settings, replace(settings, allocation_options=None), omit))
