"""The pruning methods by name, and the settings of one pruning run. Adding a method is one module
with a PruningMethod subclass plus one line in METHODS; the pipeline, the CLI and the app find it
here and ask it for its capabilities."""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

from spap_core.errors import SpapInputError
from spap_core.methods.allocation import UNIFORM, Allocation, allocation_strategy
from spap_core.methods.base import PruningMethod, Recovery
from spap_core.methods.baselines import Fasp, Flap, Magnitude, WandaSp
from spap_core.methods.obs import StructuredObs
from spap_core.methods.reconstruction import Reconstruction
from spap_core.methods.spap import Spap
from spap_core.methods.taylor import Taylor
from spap_core.models.adapters import ModelAdapter

METHODS: dict[str, PruningMethod] = {method.name: method for method in (
    Spap(),
    Magnitude(),
    WandaSp(),
    Flap(),
    Fasp(),
    StructuredObs(),
    Taylor(),
)}


def pruning_method(name: str) -> PruningMethod:
    if name not in METHODS:
        raise SpapInputError(f"Unknown method '{name}': choose one of {', '.join(METHODS)}.")
    return METHODS[name]


@dataclass(frozen=True)
class PruneSettings:
    """Everything that decides a pruning result (recorded with every run for reproducibility):
    the method, the sparsity, the method's own settings (`options`, its defaults when None), the
    weight update after the selection (`reconstruction`: None = the method's own, else SPAP's
    refit, optionally with alternating minimization, so selections compare on equal terms), how
    the sparsity is spread over the layers (`allocation`) and that strategy's own settings
    (`allocation_options`, its defaults when None)."""

    method: str = "spap"
    sparsity: float = 0.3
    options: Any = None
    # Share of every layer's attention heads removed too (0: heads untouched), rounded to the
    # nearest layout the family's class can load (spap_core.problem.layout).
    head_sparsity: float = 0.0
    reconstruction: Reconstruction | None = None
    # how the sparsity is spread over the layers: a name in spap_core.methods.allocation.ALLOCATION_STRATEGIES
    allocation: str = UNIFORM
    allocation_options: Any = None

    def __post_init__(self) -> None:
        implementation = pruning_method(self.method)
        if not isinstance(self.sparsity, (int, float)) or not 0.0 < self.sparsity < 1.0:  # NaN fails too
            raise SpapInputError(f"Sparsity must be a number strictly between 0 and 1 (got {self.sparsity!r}).")
        if self.options is None:
            object.__setattr__(self, "options", implementation.default_settings())
        elif not isinstance(self.options, implementation.settings_type):
            raise SpapInputError(f"Method '{self.method}' takes {implementation.settings_type.__name__}, "
                                 f"not {type(self.options).__name__}.")
        if (not isinstance(self.head_sparsity, (int, float)) or isinstance(self.head_sparsity, bool)
                or not 0.0 <= self.head_sparsity < 1.0):
            raise SpapInputError(f"Head sparsity must be a number from 0 (heads untouched) up to, not including, 1 "
                                 f"(got {self.head_sparsity!r}).")
        strategy = allocation_strategy(self.allocation)
        strategy.check(self.sparsity)
        if self.allocation_options is None:
            object.__setattr__(self, "allocation_options", strategy.default_settings())
        elif not isinstance(self.allocation_options, strategy.settings_type):
            raise SpapInputError(f"The {self.allocation} allocation takes {strategy.settings_type.__name__}, "
                                 f"not {type(self.allocation_options).__name__}.")
        if self.reconstruction is not None and not isinstance(self.reconstruction, Reconstruction):
            raise SpapInputError(f"reconstruction must be a Reconstruction or None (got {self.reconstruction!r}).")

    @property
    def implementation(self) -> PruningMethod:
        return METHODS[self.method]

    @property
    def allocation_strategy(self) -> Allocation:
        return allocation_strategy(self.allocation)

    @property
    def adds_output_bias(self) -> bool:
        """Whether the decisions carry an output-projection bias (from the reconstruction, when there is one)."""
        if self.reconstruction is not None:
            return self.reconstruction.bias
        return self.implementation.adds_output_bias(self.options)

    @property
    def recovery(self) -> Recovery | None:
        """The update of gate/up after the decision: the reconstruction's, else the method's own."""
        if self.reconstruction is not None:
            return self.reconstruction.recovery
        return self.implementation.recovery(self.options)

    def without_output_bias(self) -> PruneSettings:
        """The documented variant that stores no output-projection bias (only when `adds_output_bias`)."""
        if self.reconstruction is not None:
            return replace(self, reconstruction=replace(self.reconstruction, bias=False))
        return replace(self, options=self.implementation.without_output_bias(self.options))

    def for_method(self, method: str) -> PruneSettings:
        """The same sparsity, reconstruction and allocation with another method: its options stay
        when the method does, else that method's defaults (a sweep compares each method at its own
        defaults)."""
        if method == self.method:
            return self
        return PruneSettings(method=method, sparsity=self.sparsity, reconstruction=self.reconstruction,
                             allocation=self.allocation, allocation_options=self.allocation_options,
                             head_sparsity=self.head_sparsity)

    def with_allocation(self, allocation: str) -> PruneSettings:
        """The same settings spread by another allocation strategy: its options stay when the
        strategy does, else that strategy's defaults (another strategy's would not fit it)."""
        if allocation == self.allocation:
            return self
        return replace(self, allocation=allocation, allocation_options=None)

    @staticmethod
    def from_dict(values: dict) -> PruneSettings:
        """The inverse of dataclasses.asdict, as stored in every run record (validated again).
        Records written before methods had their own settings kept SPAP's fields at the top level;
        a record without `allocation_options` holds its strategy's defaults."""
        if "options" not in values:
            legacy = {key: values[key] for key in ("penalty", "refit", "altmin", "target_correction") if key in values}
            values = {"method": values["method"], "sparsity": values["sparsity"],
                      "options": legacy if values["method"] == "spap" else {}}
        implementation = pruning_method(values["method"])
        options = _from_dict(implementation.settings_type, values.get("options") or {})
        reconstruction = values.get("reconstruction")
        allocation = values.get("allocation", UNIFORM)
        allocation_options = _from_dict(allocation_strategy(allocation).settings_type,
                                        values.get("allocation_options") or {})
        return PruneSettings(method=values["method"], sparsity=values["sparsity"], options=options,
                             reconstruction=(None if reconstruction is None
                                             else _from_dict(Reconstruction, reconstruction)),
                             allocation=allocation, allocation_options=allocation_options,
                             head_sparsity=values.get("head_sparsity", 0.0))


def settings_for_family(settings: PruneSettings, family: ModelAdapter) -> tuple[PruneSettings, list[str]]:
    """The settings a run on this family uses, and a note for each change: a method that adds a
    down_proj bias runs its no-bias variant where the family's transformers class cannot store one,
    so what is saved and reloaded is exactly what was evaluated. Decided from the config alone,
    before any forward pass. (The same holds for the heads' output bias: head_settings.)"""
    if settings.adds_output_bias and not family.mlp_channels.stores_output_bias:
        return settings.without_output_bias(), [
            f"{settings.method} runs without its down_proj bias (bias compensation off): model type "
            f"'{family.model_type}' cannot store a down_proj bias in its transformers class, and the saved model "
            "must be the one evaluated."]
    if settings.head_sparsity > 0 and settings.adds_output_bias and not family.attention_heads.stores_output_bias:
        return settings, [f"{settings.method} prunes the attention heads without its output bias: model type "
                          f"'{family.model_type}' cannot store an attention output-projection bias in its "
                          "transformers class, and the saved model must be the one evaluated."]
    return settings, []


def head_settings(settings: PruneSettings, family: ModelAdapter) -> PruneSettings:
    """The settings the head step runs with: without an output bias where the family's attention
    cannot store one (settings_for_family notes it)."""
    if settings.adds_output_bias and not family.attention_heads.stores_output_bias:
        return settings.without_output_bias()
    return settings


def _from_dict(cls: type, values: dict) -> Any:
    """A (nested) frozen dataclass from its asdict form."""
    hints = typing.get_type_hints(cls)
    arguments = {}
    for item in fields(cls):
        if item.name not in values:
            continue
        value = values[item.name]
        arguments[item.name] = _from_dict(hints[item.name], value) if is_dataclass(hints[item.name]) else value
    return cls(**arguments)


def with_options(settings: PruneSettings, **changes: Any) -> PruneSettings:
    """`settings` with fields of its method's options changed."""
    return replace(settings, options=replace(settings.options, **changes))
