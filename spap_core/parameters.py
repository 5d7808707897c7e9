"""Every hyperparameter of a pruning run, declared once: its short key, where it lives in the
settings, its symbol and help text, its range and scale, its CLI flags and its sweep range. The
CLI's flags, the app's Run form and share link, the settings summary, the sensitivity scan and
the benchmarks' override parser are all generated from these declarations, so a new
hyperparameter is one entry here plus the field in its settings dataclass (whose default stays
the one default).

Keys are short and stable, because share links and bench scripts carry them: `K=10`, `delta=0.2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import numpy as np

from spap_core.errors import SpapInputError
from spap_core.methods.altmin import STEP_PRECISIONS
from spap_core.methods.problem import PRECISIONS, PRIORS
from spap_core.methods.registry import PruneSettings
from spap_core.methods.spap import SCHEDULES, SCORES, STARTS

GROUPS = {
    "run": "Run",
    "penalty": "Penalty path",
    "selection": "Channel selection",
    "refit": "Refit and targets",
    "altmin": "Alternating minimization",
    "calibration": "Calibration",
    "evaluation": "Evaluation",
    "latency": "Latency measurement",
}


@dataclass(frozen=True)
class Parameter:
    """One hyperparameter. `path` is a dotted field path into PruneSettings (SPAP's own settings
    sit under `options`); calibration parameters have none, their consumers (the CLI, the app's
    data spec) hold them."""

    key: str  # the URL, CLI-destination, bench-override and summary key
    symbol: str  # how the summary writes it: "K", "ρ⁽⁰⁾", "δ"
    label: str  # the form's label
    help: str  # one line: the form's caption and the CLI's help
    kind: type  # int, float, bool or str
    group: str  # a GROUPS key: where the form puts it
    flags: tuple[str, ...]  # the CLI's flags
    path: str = ""
    choices: tuple[str, ...] = ()
    low: float | None = None  # the range every consumer enforces: CLI, form, share link, benches
    high: float | None = None
    step: float | None = None
    slider: bool = False  # a slider in the form (else a number box, a select box or a checkbox)
    log_scale: bool = False  # its sweeps space values geometrically
    sweep: tuple[float, float] | None = None  # the sensitivity scan's default range; None = not scanned
    lead: bool = False  # shown first on the Run form: what a class varies

    def read(self, settings: PruneSettings) -> Any:
        """The value in `settings` (only parameters with a path)."""
        value: Any = settings
        for name in self.path.split("."):
            value = getattr(value, name)
        return value

    def apply(self, settings: PruneSettings, value: Any) -> PruneSettings:
        """`settings` with this parameter set to `value`, checked by the settings' own validation."""
        return _replace_path(settings, self.path.split("."), self.coerce(value))

    def coerce(self, value: Any) -> Any:
        """The value as this parameter's type, from a CLI word, a URL parameter or a bench override."""
        if self.kind is bool:
            if isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0"}:
                    raise SpapInputError(f"{self.symbol} must be true or false (got {value!r}).")
                return value.lower() in {"true", "1"}
            return bool(value)
        if self.kind is str:
            if value not in self.choices:
                raise SpapInputError(f"{self.symbol} must be one of {', '.join(self.choices)} (got {value!r}).")
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise SpapInputError(f"{self.symbol} must be a number (got {value!r}).") from None
        if self.kind is int:
            if not math.isfinite(number) or number != int(number):
                raise SpapInputError(f"{self.symbol} must be a whole number (got {value!r}).")
            number = int(number)
        return self.check(number)

    def check(self, value: float, name: str | None = None) -> float:
        """`value` if it lies in the declared range, else one line naming the parameter (as `name`,
        e.g. the CLI flag typed, or its symbol) and the range; NaN is never in range."""
        if self.low is not None and not self.low <= value <= self.high:
            raise SpapInputError(f"{name or self.symbol} must be between {self.bounds_text} "
                                 f"(got {self.shown(value)}).")
        return value

    @property
    def bounds_text(self) -> str:
        return f"{self.shown(self.low)} and {self.shown(self.high)}"

    def shown(self, number: float) -> str:
        """A bound or a value as typed: whole numbers in full (2147483647, not 2.14748e+09)."""
        return str(int(number)) if self.kind is int and float(number).is_integer() else f"{number:g}"

    @property
    def flag_name(self) -> str:
        """How the CLI's messages name it: '--iterations (-K)'."""
        return self.flags[0] + (f" ({', '.join(self.flags[1:])})" if len(self.flags) > 1 else "")

    def format(self, value: Any) -> str:
        if self.key == "sparsity":
            return f"{value:.0%}"
        return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)

    def sweep_values(self, low: float, high: float, points: int) -> list:
        """`points` values from low to high, geometric for log-scale parameters, whole for integers."""
        grid = np.geomspace(low, high, points) if self.log_scale else np.linspace(low, high, points)
        if self.kind is int:
            return sorted({int(round(v)) for v in grid})
        return [float(f"{v:.4g}") for v in grid]


def _replace_path(obj: Any, names: list[str], value: Any) -> Any:
    if len(names) == 1:
        return replace(obj, **{names[0]: value})
    return replace(obj, **{names[0]: _replace_path(getattr(obj, names[0]), names[1:], value)})


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("sparsity", "sparsity", "Sparsity", "Fraction λ/n of MLP channels removed from every layer (uniform).",
              float, "run", ("--sparsity",), path="sparsity", low=0.05, high=0.95, step=0.05, slider=True,
              sweep=(0.1, 0.6), lead=True),
    Parameter("K", "K", "K: ρ iterations",
              "How many times s steps and ρ grows; with the ramp, the blocks channels are marked in.",
              int, "penalty", ("--iterations", "-K"), path="options.penalty.iterations", low=1, high=60, step=1,
              slider=True, sweep=(1, 40), lead=True),
    Parameter("tau", "τ", "τ: penalty growth",
              "ρ ← τ·ρ after every iteration: how hard the marked columns of W are pushed to zero.",
              float, "penalty", ("--tau",), path="options.penalty.tau", low=1.05, high=8.0, step=0.05, slider=True,
              sweep=(1.05, 8.0), lead=True),
    Parameter("alpha", "α", "α: mask momentum", "Step of s towards the marked channels; 1 jumps straight to the marks.",
              float, "penalty", ("--alpha",), path="options.penalty.momentum", low=0.05, high=1.0, step=0.05,
              slider=True, sweep=(0.05, 1.0), lead=True),
    Parameter("rho0", "ρ⁽⁰⁾", "ρ⁽⁰⁾: initial penalty",
              "First weight of the penalty Σ sᵢ‖W[:,i]‖², relative to mean diag H.",
              float, "penalty", ("--rho0",), path="options.penalty.rho0", low=1e-6, high=1e3, step=0.005,
              log_scale=True, sweep=(1e-4, 10.0)),
    Parameter("start", "start", "Start s⁽⁰⁾", "zero = nothing marked (the paper); centre = λ/n everywhere.",
              str, "penalty", ("--start",), path="options.penalty.start", choices=STARTS),
    Parameter("t", "t", "t: score balance", "Score ‖W[:,i]‖·mᵢᵗ: how much the activation magnitude mᵢ counts.",
              float, "selection", ("--balance", "-t"), path="options.penalty.balance", low=0.0, high=3.0, step=0.1,
              slider=True, sweep=(0.0, 2.0)),
    Parameter("score", "score", "Magnitude mᵢ in the score",
              "marginal = ‖Zᵢ‖; centred = ‖Zᵢ − mean‖ (what the bias cannot absorb); partial = what channel i adds "
              "beyond the others (1/√[A⁻¹]ᵢᵢ).",
              str, "selection", ("--score",), path="options.penalty.score", choices=SCORES),
    Parameter("schedule", "schedule", "Marking schedule",
              "fixed = mark λ channels every step; ramp = ⌈λk/K⌉ at step k, removed in blocks.",
              str, "selection", ("--schedule",), path="options.penalty.schedule", choices=SCHEDULES),
    Parameter("delta", "δ", "δ: ridge", "δ·h̄ added to every solve, for stability (relative to mean diag H).",
              float, "refit", ("--delta",), path="options.refit.ridge", low=0.0, high=100.0, step=0.005,
              log_scale=True, sweep=(1e-3, 1.0)),
    Parameter("prior", "prior", "Refit prior", "The ridge pulls refitted weights towards the dense ones or towards zero.",
              str, "refit", ("--prior",), path="options.refit.prior", choices=PRIORS),
    Parameter("bias", "bias", "Bias compensation", "A down_proj bias absorbs the mean output of the pruned channels.",
              bool, "refit", ("--bias",), path="options.refit.bias"),
    Parameter("precision", "precision", "Solver precision",
              "float32 solves faster; float64 is safer on ill-conditioned layers.",
              str, "refit", ("--precision",), path="options.refit.precision", choices=PRECISIONS),
    Parameter("beta", "β", "β: target correction",
              "Each layer also repairs β of the error earlier pruned layers left in the stream.",
              float, "refit", ("--target-correction", "--beta"), path="options.target_correction", low=0.0, high=1.0,
              step=0.05, slider=True, sweep=(0.0, 1.0)),
    Parameter("am_rounds", "AM rounds", "Rounds", "0 = off. Each round: Adam on gate/up, then an exact down_proj refit.",
              int, "altmin", ("--altmin-rounds",), path="options.altmin.rounds", low=0, high=10, step=1, slider=True,
              sweep=(0, 4)),
    Parameter("am_steps", "AM steps", "Adam steps per round", "Gradient steps on gate_proj and up_proj in every round.",
              int, "altmin", ("--altmin-steps",), path="options.altmin.steps", low=1, high=200, step=1, slider=True),
    Parameter("am_lr", "AM lr", "Step size (lr)", "Adam learning rate for gate/up.",
              float, "altmin", ("--altmin-lr",), path="options.altmin.lr", low=1e-7, high=1.0, step=1e-5,
              log_scale=True),
    Parameter("am_batch", "AM batch", "Tokens per Adam step", "Calibration tokens sampled for each gradient step.",
              int, "altmin", ("--altmin-batch",), path="options.altmin.batch_tokens", low=16, high=65536, step=1),
    Parameter("am_precision", "AM products", "Precision of the Adam steps",
              "float32 = the same result on every machine. auto = bfloat16 products where the hardware multiplies "
              "them natively (CUDA, AVX512-BF16 or AMX CPUs): faster, but the result then depends on the machine. "
              "The weights, Adam's state and the down_proj refit stay float32 either way.",
              str, "altmin", ("--altmin-precision",), path="options.altmin.precision", choices=STEP_PRECISIONS),
    Parameter("nsamples", "samples", "Samples", "Random windows of the calibration text.",
              int, "calibration", ("--nsamples",), low=1, high=1024, step=1, sweep=(2, 32)),
    Parameter("seqlen", "tokens per sample", "Tokens per sample",
              "Length of each window; samples × tokens = calibration tokens.",
              int, "calibration", ("--seqlen",), low=8, high=8192, step=1),
    Parameter("seed", "seed", "Seed", "Chooses the calibration windows (and the Adam batches).",
              int, "calibration", ("--seed",), low=0, high=2**31 - 1, step=1),
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
BY_KEY = {parameter.key: parameter for parameter in PARAMETERS}
SETTINGS_PARAMETERS = tuple(p for p in PARAMETERS if p.path)
CALIBRATION_PARAMETERS = tuple(p for p in PARAMETERS if not p.path)
SCANNED = tuple(p for p in PARAMETERS if p.sweep is not None)


def parameter(key: str) -> Parameter:
    if key not in BY_KEY:
        raise SpapInputError(f"Unknown hyperparameter '{key}': choose one of {', '.join(BY_KEY)}.")
    return BY_KEY[key]


def with_values(settings: PruneSettings, values: dict[str, Any]) -> PruneSettings:
    """`settings` with every `key: value` applied (keys of settings parameters only)."""
    for key, value in values.items():
        settings = parameter(key).apply(settings, value)
    return settings


def settings_values(settings: PruneSettings) -> dict[str, Any]:
    """Every settings parameter's value in `settings` that its method has (a share link's content)."""
    return {p.key: p.read(settings) for p in SETTINGS_PARAMETERS if _has_path(settings, p.path)}


def _has_path(settings: PruneSettings, path: str) -> bool:
    value: Any = settings
    for name in path.split("."):
        if not is_dataclass(value) or name not in {f.name for f in fields(value)}:
            return False
        value = getattr(value, name)
    return True


def describe(settings: PruneSettings, omit: frozenset[str] | set[str] = frozenset()) -> str:
    """One line with the method and every parameter value it has, except the keys in `omit`."""
    parts = [] if "method" in omit else [f"method {settings.method}"]
    for p in SETTINGS_PARAMETERS:
        if p.key in omit or not _has_path(settings, p.path):
            continue
        value = p.read(settings)
        parts.append(f"{p.symbol} {p.format(value)}" if p.kind in (str, bool) or p.key == "sparsity"
                     else f"{p.symbol} = {p.format(value)}")
    if settings.reconstruction is not None and "reconstruction" not in omit:
        parts.append(f"weight update {settings.reconstruction.name}")
    if settings.allocation != "uniform" and "allocation" not in omit:
        parts.append(f"{settings.allocation} allocation")
    return ", ".join(parts)
