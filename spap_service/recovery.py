"""A recovery after pruning as the pages show it: its loss curve (each step's training loss, the
held-out perplexity at the steps it was measured), from the steps a running job reports or from a
finished run's record, and how far it is in words."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from spap_core.recovery.loop import RecoveryStep
from spap_service.estimates import duration

CURVE_COLUMNS = ["step", "loss", "heldout_ppl"]  # heldout_ppl NaN at the steps it was not measured


def curve_from_steps(steps: Sequence[RecoveryStep]) -> pd.DataFrame:
    """One row per step reported so far: its number, its training loss, its held-out perplexity."""
    return pd.DataFrame([(step.step, step.loss, math.nan if step.heldout_ppl is None else step.heldout_ppl)
                         for step in steps], columns=CURVE_COLUMNS)


def curve_from_record(record: Mapping[str, Any]) -> pd.DataFrame | None:
    """A finished run's recovery curve from its record's `recovery` (losses, one per step done, and
    [step, perplexity] pairs); None for a run without a recovery."""
    recovery = record.get("recovery")
    if not recovery:
        return None
    heldout = {int(step): float(ppl) for step, ppl in recovery["heldout_ppl"]}
    return pd.DataFrame([(step, float(loss), heldout.get(step, math.nan))
                         for step, loss in enumerate(recovery["losses"], start=1)], columns=CURVE_COLUMNS)


def recovery_progress_text(step: RecoveryStep) -> str:
    """'Recovery step 12 of 100 · loss 3.214 · 8 s so far, about 59 s left': the time left from the
    mean time per step so far."""
    left = step.elapsed / step.step * (step.steps - step.step)
    return (f"Recovery step {step.step} of {step.steps} · loss {step.loss:.3f} · {step.elapsed:.0f} s so far, "
            f"{duration(left)} left")

