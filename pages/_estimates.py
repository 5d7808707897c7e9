"""How long the runs a page is about to queue should take here, and where a sweep's or scan's points
run, as the captions beside the button say it (the estimates themselves: spap_service.estimates)."""

from __future__ import annotations

from pages._requests import form_request, preset_values
from spap_core.models.loading import LoadedModel
from spap_service.data import dense_perplexity_known
from spap_service.estimates import duration, many_runs_seconds, model_speed, recovery_seconds
from spap_service.executors import RayExecutor, point_executor
from spap_service.presets import DemoPreset
from spap_service.runs import RunRequest


def time_estimate(loaded: LoadedModel, requests: list[RunRequest]) -> float | None:
    """Seconds the runs of `requests` should take here (spap_service.estimates); None when the
    model cannot be timed (then nothing is claimed)."""
    if not requests:
        return 0.0
    try:
        speed = model_speed(loaded)
    except (RuntimeError, ValueError):  # a model that does not run on random ids says so when it runs
        return None
    runs = [one for request in requests for one in request.seed_requests()]  # every calibration seed is a run
    return many_runs_seconds(speed, runs, dense_perplexity_known(loaded, requests[0].data))


def recovery_estimate(loaded: LoadedModel, request: RunRequest) -> float | None:
    """Seconds of time_estimate([request]) that its recovery after pruning takes, over every
    calibration seed; None when the model cannot be timed."""
    try:
        speed = model_speed(loaded)
    except (RuntimeError, ValueError):
        return None
    return request.seeds * recovery_seconds(speed, request)


def estimate_caption(what: str, seconds: float | None, seeds: int = 1, recovery: str | None = None,
                     recovery_s: float | None = None) -> str:
    """"This run: about 2 min on this machine, …", or that no estimate is claimed when `seconds` is None;
    with more than one calibration seed it says that each seed is a run of its own, and with a
    recovery (`recovery`, its settings in words) how much of the time it takes."""
    if seeds > 1:
        what += f" over {seeds} calibration seeds ({seeds} times the runs of one seed)"
    if seconds is None:
        return f"{what}: no time estimate for this model."
    of_which = "" if recovery is None or recovery_s is None else \
        f", of which {duration(recovery_s)} for the recovery ({recovery})"
    return (f"{what}: {duration(seconds)} on this machine{of_which}, estimated from this model's measured speed; the "
            "time it took is shown next to the result.")


def preset_estimate_caption(loaded: LoadedModel | None, preset: DemoPreset) -> str:
    """How long the run `preset` fills Run SPAP's form with should take here: the estimate Run SPAP
    quotes under its button once the preset is applied, or that there is none yet."""
    if loaded is None:
        return f"{preset.name} preset: no time estimate yet; it is made once a model is loaded (Model & data)."
    seconds = time_estimate(loaded, [form_request(preset_values(preset))])
    if seconds is None:
        return f"{preset.name} preset: no time estimate for this model."
    return (f"{preset.name} preset: {duration(seconds)} on this machine for this model, the estimate Run SPAP shows "
            "under its button.")


def executor_note() -> str:
    """Where a sweep's or scan's points run (spap_service.executors), for the caption under its estimate."""
    executor = point_executor()
    note = f"Its points run {executor.description}"
    return note + (" (the estimate counts them one after another)." if isinstance(executor, RayExecutor) else ".")
