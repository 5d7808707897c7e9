"""The declaration of one hyperparameter: its short key, where it lives in the settings, its symbol
and help text, its range and scale, its CLI flags and its sweep range. The CLI's flags, the app's
forms and share links, the settings summary, the sensitivity scan and the benchmarks' override
parser are all generated from these declarations (collected in spap_core.pipeline.parameters), so a new
hyperparameter is one declaration plus the field in its settings dataclass (whose default stays the
one default). A method declares its own on its class (`PruningMethod.parameters`).

Keys are short and stable, because share links and bench scripts carry them: `K=10`, `delta=0.2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from spap_core.errors import SpapInputError

SHARES = ("sparsity", "head_sparsity")  # written as percentages: 'sparsity 30%'

# The groups of the parameters every run has, by key and title. The forms and the CLI's help put
# the run's own first, then each method's (PruningMethod.groups), then those of the data and the
# measurements: spap_core.pipeline.parameters.GROUPS is that order.
RUN_GROUPS = {"run": "Run"}
# The group of the layer allocation strategies' own parameters (Allocation.parameters), shown after
# the methods'.
ALLOCATION_GROUPS = {"allocation": "Layer allocation"}
# The group of the recovery after pruning (spap_core.recovery.settings.RECOVERY_PARAMETERS), shown
# after the allocation's: it runs after the pruning they decide.
RECOVERY_GROUPS = {"recovery": "Recovery after pruning"}
DATA_GROUPS = {
    "calibration": "Calibration",
    "evaluation": "Evaluation",
    "latency": "Latency measurement",
}


@dataclass(frozen=True)
class Parameter:
    """One hyperparameter. `path` is a dotted field path into PruneSettings (a method's own
    settings sit under `options`, a layer allocation strategy's under `allocation_options`);
    calibration parameters have none, their consumers (the CLI, the app's data spec) hold them. A
    method (or a strategy) declares its parameters on its class with paths into its own settings
    type; spap_core.pipeline.parameters collects them under `options.` with `method` set (under
    `allocation_options.` with `allocation` set)."""

    key: str  # the URL, CLI-destination, bench-override and summary key
    symbol: str  # how the summary writes it: "K", "ρ⁽⁰⁾", "δ"
    label: str  # the form's label
    help: str  # one line: the form's caption and the CLI's help
    kind: type  # int, float, bool or str
    group: str  # a key of spap_core.pipeline.parameters.GROUPS: where the form puts it
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
    method: str | None = None  # the method whose settings hold it; None = every run
    allocation: str | None = None  # the allocation strategy whose settings hold it; None = every run
    # Part of the method's own weight update after the selection, which --reconstruction replaces:
    # with a reconstruction, setting it would change nothing, so it is refused.
    own_update: bool = False

    def read(self, settings: Any) -> Any:
        """The value in `settings` (a PruneSettings; only parameters with a path)."""
        value: Any = settings
        for name in self.path.split("."):
            value = getattr(value, name)
        return value

    def apply(self, settings: Any, value: Any) -> Any:
        """`settings` (a PruneSettings) with this parameter set to `value`, checked by the declared
        range and the settings' own validation; refused when it belongs to another method or
        another allocation strategy."""
        if self.method is not None and getattr(settings, "method", None) != self.method:
            raise SpapInputError(f"{self.key} is a setting of method {self.method}, not of "
                                 f"{getattr(settings, 'method', '?')}.")
        if self.allocation is not None and getattr(settings, "allocation", None) != self.allocation:
            raise SpapInputError(f"{self.key} is a setting of the {self.allocation} allocation, not of the "
                                 f"{getattr(settings, 'allocation', '?')} allocation.")
        return _replace_path(settings, self.path.split("."), self.coerce(value))

    def for_method(self, method: str) -> Parameter:
        """This declaration of a method's own (its path into the method's settings) as a run's:
        under `options`, with the method named."""
        return replace(self, method=method, path=f"options.{self.path}")

    def for_allocation(self, allocation: str) -> Parameter:
        """This declaration of a layer allocation strategy's own (its path into the strategy's
        settings) as a run's: under `allocation_options`, with the strategy named."""
        return replace(self, allocation=allocation, path=f"allocation_options.{self.path}")

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
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            raise SpapInputError(f"{name or self.symbol} must be between {self.bounds_text} "
                                 f"(got {self.shown(value)}).")
        return value

    @property
    def bounds_text(self) -> str:
        """'0 and 1': the declared range (a parameter declares both bounds or neither)."""
        if self.low is None or self.high is None:
            raise ValueError(f"{self.key} declares no range.")
        return f"{self.shown(self.low)} and {self.shown(self.high)}"

    def shown(self, number: float) -> str:
        """A bound or a value as typed: whole numbers in full (2147483647, not 2.14748e+09)."""
        return str(int(number)) if self.kind is int and float(number).is_integer() else f"{number:g}"

    @property
    def flag_name(self) -> str:
        """How the CLI's messages name it: '--iterations (-K)'."""
        return self.flags[0] + (f" ({', '.join(self.flags[1:])})" if len(self.flags) > 1 else "")

    def format(self, value: Any) -> str:
        if self.key in SHARES:
            return f"{value:.0%}"
        return (f"{value:g}" if isinstance(value, float)
                else str(value).lower() if isinstance(value, bool) else str(value))

    def phrase(self, value: Any) -> str:
        """How the summary writes it with a value: 'K = 10', 'sparsity 30%', 'score partial'."""
        shown = self.format(value)
        return (f"{self.symbol} {shown}" if self.kind in (str, bool) or self.key in SHARES
                else f"{self.symbol} = {shown}")

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
