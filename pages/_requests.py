"""What the session would run: its data choice, the run request sweeps and scans start from, the
request the app's defaults make (what a result's label names differences from), and the Run form's
values of a request."""

from __future__ import annotations

from dataclasses import replace

from pages._model import target_device
from pages._state import session
from spap_core.data.texts import HUB_SPEC, default_text_spec
from spap_core.pipeline.parameters import settings_values
from spap_service.data import DataSpec, TextChoice
from spap_service.presets import interactive_run_size, interactive_settings
from spap_service.runs import RunRequest


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


def run_request() -> RunRequest:
    """Settings of the last run submitted on the Run SPAP page (defaults before the first), with
    the current data: the base of sweeps and sensitivity scans."""
    state = session()
    settings = state.prune_settings or interactive_settings(target_device())
    return RunRequest(settings=settings, seed=state.run_seed, data=data_spec())


def run_size_note() -> str:
    """Which interactive defaults apply and why (GPU sizes are much larger)."""
    size = interactive_run_size(target_device())
    where = "a GPU was found, so GPU defaults apply" if target_device().type == "cuda" else "running on the CPU"
    return f"{size.label} ({where})."


def reference_request() -> RunRequest:
    """The run the app's defaults would make: what a result's label names differences from."""
    size = interactive_run_size(target_device())
    data = replace(data_spec(), nsamples=size.nsamples, seqlen=size.seqlen)
    return RunRequest(settings=interactive_settings(target_device()), seed=0, data=data)


def form_values(request: RunRequest) -> dict:
    """The Run form's values of a run: its settings, calibration size and seed, by key."""
    return {**settings_values(request.settings), "nsamples": request.data.nsamples, "seqlen": request.data.seqlen,
            "seed": request.seed}
