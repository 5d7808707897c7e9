"""The recovery's curve and progress line as the pages show them (spap_service.recovery)."""

from __future__ import annotations

import math

from spap_core.recovery.loop import RecoveryStep
from spap_service.recovery import curve_from_record, curve_from_steps, recovery_progress_text


def test_the_curve_has_a_row_per_step_and_the_heldout_perplexity_only_where_measured():
    steps = [RecoveryStep(1, 3.5, None, 1.0, 3), RecoveryStep(2, 3.4, 40.0, 2.0, 3), RecoveryStep(3, 3.2, 38.5, 3.0, 3)]
    live = curve_from_steps(steps)
    assert live["step"].tolist() == [1, 2, 3] and live["loss"].tolist() == [3.5, 3.4, 3.2]
    assert math.isnan(live["heldout_ppl"].iloc[0]) and live["heldout_ppl"].tolist()[1:] == [40.0, 38.5]
    record = {"recovery": {"losses": [3.5, 3.4, 3.2], "heldout_ppl": [[2, 40.0], [3, 38.5]]}}
    assert curve_from_record(record).equals(live)  # the finished run's curve is the one drawn live
    assert curve_from_record({"recovery": None}) is None and curve_from_record({}) is None


def test_the_progress_line_says_the_step_and_the_time_left_from_the_time_per_step_so_far():
    assert recovery_progress_text(RecoveryStep(10, 3.21449, 41.0, 20.0, 40)) == (
        "Recovery step 10 of 40 · loss 3.214 · 20 s so far, about 60 s left")
    assert recovery_progress_text(RecoveryStep(40, 3.0, 39.0, 80.0, 40)).endswith("80 s so far, about 1 s left")
