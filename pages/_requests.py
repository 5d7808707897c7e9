"""What the session would run: its data choice, the Run form's fields, their defaults and the run
request their values make, the request last submitted on Run SPAP, the settings sweeps and scans keep
fixed (their own copy, taken from Run SPAP only when the user asks), and the request the app's
defaults make (what a result's label names differences from)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pages._model import target_device
from pages._state import session
from spap_core.data.texts import HUB_SPEC, default_text_spec
from spap_core.methods.registry import PruneSettings
from spap_core.pipeline.parameters import (
    RECOVERY_PARAMETERS,
    Parameter,
    method_parameters,
    recovery_values,
    recovery_with_values,
    settings_values,
    with_values,
)
from spap_core.recovery.settings import DISTILL_KEYS, NONE, RECOVERY_MODE, RecoverySettings
from spap_core.runner.spec import ParameterBudget
from spap_service.data import DataSpec, TextChoice
from spap_service.presets import DemoPreset, interactive_run_size, interactive_settings
from spap_service.runs import MAX_SEEDS, RunRequest

# The run API's ParameterBudget as a field of Run SPAP (the CLI's --param-sparsity): 0 leaves the
# sparsities to their own sliders; the split chooses the heads, as --param-sparsity without --head-sparsity.
PARAMETER_BUDGET = Parameter(
    "param_sparsity", "parameter budget", "Parameter budget",
    "One parameter budget, split between channels and heads: the share of the decoder layers' parameters to "
    "remove; the run measures which split of MLP channels and attention heads meets it with the least layer error, "
    "and the two sparsities above are then not used (0 = off: set them yourself).",
    float, "run", ("--param-sparsity",), low=0.0, high=0.9, step=0.05, slider=True, lead=True)
# How many calibration seeds a run repeats over (RunRequest.seeds): each seed prunes the model again
# on other calibration tokens, so the spread across seeds shows beside the evaluation windows' interval.
CALIBRATION_SEEDS = Parameter(
    "seeds", "calibration seeds", "Calibration seeds",
    f"Repeat the run over this many calibration seeds (seed, seed + 1, …; 1 to {MAX_SEEDS}): each one prunes "
    "the model again on other calibration tokens, so the result says how much it depends on which tokens were "
    "drawn. Each seed takes as long as one run.",
    int, "calibration", ("--seeds",), low=1, high=MAX_SEEDS, step=1)
_SPAP_FIELDS = method_parameters("spap")
# Run SPAP's fields: the run's own settings and the budget, SPAP's, the calibration's and its seeds, then
# the recovery after pruning's (RunRequest.recovery, not PruneSettings: their paths are RecoverySettings')
RUN_FORM = (*(p for p in _SPAP_FIELDS if p.lead), PARAMETER_BUDGET, *(p for p in _SPAP_FIELDS if not p.lead),
            CALIBRATION_SEEDS, *RECOVERY_PARAMETERS)
_SETTINGS_FIELDS = tuple(p for p in RUN_FORM if p.path and p not in RECOVERY_PARAMETERS)


def shown_recovery_parameters(mode: str) -> tuple[Parameter, ...]:
    """The recovery parameters a recovery of `mode` uses, as the form shows them and a share link
    carries them: the mode alone without a recovery, the distillation's only for a mode that distils."""
    distills = RecoverySettings(mode=mode).distills
    return tuple(p for p in RECOVERY_PARAMETERS if p.key == RECOVERY_MODE or (
        mode != NONE and (distills or p.key not in DISTILL_KEYS)))


def _default_text_choice(purpose: str) -> TextChoice:
    """The library's default text (spap_core.data.texts.default_text_spec), as the Model & data page's choice."""
    spec = default_text_spec(purpose)
    if spec == HUB_SPEC:
        return TextChoice(kind="hub")
    return TextChoice(kind="file", path=spec or "")


def data_spec() -> DataSpec:
    """The session's data choice, defaulting to the interactive run size of the target device."""
    state = session()
    if state.data_spec is None:
        size = interactive_run_size(target_device())
        state.data_spec = DataSpec(
            calibration=_default_text_choice("calibration"), evaluation=_default_text_choice("evaluation"),
            nsamples=size.nsamples, seqlen=size.seqlen, eval_windows=size.eval_windows,
            eval_len=size.eval_len, batch_size=size.batch_size,
        )
    return state.data_spec


def form_defaults() -> dict[str, Any]:
    """Every Run form field's default: the interactive settings of the target device, the
    calibration size chosen on Model & data, seed 0, one calibration seed."""
    defaults = settings_values(interactive_settings(target_device()))
    spec = data_spec()
    others = {"nsamples": spec.nsamples, "seqlen": spec.seqlen, "seed": 0, PARAMETER_BUDGET.key: 0.0,
              CALIBRATION_SEEDS.key: 1}
    others.update(recovery_values(RecoverySettings()))
    return {declared.key: defaults[declared.key] if declared in _SETTINGS_FIELDS else others[declared.key]
            for declared in RUN_FORM}


def form_request(values: dict[str, Any]) -> RunRequest:
    """The run that the Run form's `values` (every field, by key) make on the session's data.
    Raises SpapInputError for settings SPAP cannot take."""
    settings = with_values(PruneSettings(method="spap"), {p.key: values[p.key] for p in _SETTINGS_FIELDS})
    share = float(values[PARAMETER_BUDGET.key])
    return RunRequest(settings=settings, seed=int(values["seed"]),
                      data=replace(data_spec(), nsamples=int(values["nsamples"]), seqlen=int(values["seqlen"])),
                      budget=ParameterBudget(share) if share > 0 else None, seeds=int(values[CALIBRATION_SEEDS.key]),
                      recovery=recovery_with_values({p.key: values[p.key] for p in RECOVERY_PARAMETERS}))


def preset_values(preset: DemoPreset) -> dict[str, Any]:
    """Every Run form field as `preset` fills it: its own values, the defaults for the rest."""
    return {**form_defaults(), **preset.values}


def _on_session_data(request: RunRequest) -> RunRequest:
    """`request`'s settings, seed and calibration size on the session's texts and evaluation as
    Model & data has them now (that page is where they change)."""
    return replace(request, data=replace(data_spec(), nsamples=request.data.nsamples, seqlen=request.data.seqlen))


def submitted_request() -> RunRequest:
    """The run last submitted on Run SPAP (the form's defaults before the first)."""
    submitted = session().submitted_run
    return form_request(form_defaults()) if submitted is None else _on_session_data(submitted)


def comparison_request() -> RunRequest:
    """What every point of a sweep or scan keeps fixed: the comparison pages' own copy of Run SPAP's
    settings, taken when one of them is first shown and then only when the user asks
    (`take_submitted_settings`), so a run submitted meanwhile never changes a sweep's settings. It
    holds no recovery: a scan never recovers, and a sweep adds the kept one (comparison_recovery)
    only when the user keeps it on."""
    return replace(_kept_comparison_request(), recovery=RecoverySettings())


def comparison_recovery() -> RecoverySettings:
    """The recovery after pruning of the run whose settings the comparison pages keep (none when that
    run had none): what the sweep offers to run after every point."""
    return _kept_comparison_request().recovery


def _kept_comparison_request() -> RunRequest:
    state = session()
    if state.comparison_base is None:
        take_submitted_settings()
    return _on_session_data(state.comparison_base or submitted_request())


def take_submitted_settings() -> None:
    """Make the run last submitted on Run SPAP what sweeps and scans keep fixed (the user's action),
    its recovery included; without its parameter budget, which would override the sparsity a sweep
    varies."""
    session().comparison_base = replace(submitted_request(), budget=None)


def run_size_note() -> str:
    """Which interactive defaults apply and why (GPU sizes are much larger)."""
    size = interactive_run_size(target_device())
    where = "a GPU was found, so GPU defaults apply" if target_device().type == "cuda" else "running on the CPU"
    return f"{size.label}; {where}."


def reference_request() -> RunRequest:
    """The run the app's defaults would make: what a result's label names differences from."""
    size = interactive_run_size(target_device())
    data = replace(data_spec(), nsamples=size.nsamples, seqlen=size.seqlen)
    return RunRequest(settings=interactive_settings(target_device()), seed=0, data=data)


def form_values(request: RunRequest) -> dict:
    """The Run form's values of a run: its settings, parameter budget (0: none), calibration size,
    seed, calibration seeds and recovery, by key."""
    return {**settings_values(request.settings), PARAMETER_BUDGET.key: 0.0 if request.budget is None
            else request.budget.share, "nsamples": request.data.nsamples, "seqlen": request.data.seqlen,
            "seed": request.seed, CALIBRATION_SEEDS.key: request.seeds, **recovery_values(request.recovery)}
