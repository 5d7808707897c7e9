"""The Perplexity vs sparsity page through streamlit's AppTest on the tiny model: when the Run SPAP
settings it keeps recover after pruning, it offers that recovery for every point, and a recovered
sweep draws each method before recovery (dashed) beside after it (solid) and tables both."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
from app_harness import array, click, finish_job, keep, open_page, shown, start_app, titled

from pages._palette import method_style
from spap_core.recovery.settings import RecoverySettings
from spap_service.comparisons import BEFORE_RECOVERY, RESULT_TABLES, perplexity_by_sparsity, recovery_order

RECOVERY = RecoverySettings(mode="lora", steps=2, heldout_every=2)


def estimate_caption(at) -> str:
    return next(c.value for c in at.caption if "runs (methods × sparsities)" in c.value)


def test_a_sweep_from_a_recovered_run_recovers_every_point_and_shows_before_and_after(app_files):
    at = start_app()
    open_page(at, "perplexity_sweep")
    assert not [box for box in at.checkbox if box.key == "sweep_recovery"]  # no recovery kept: none offered
    keep(at, "comparison_base", replace(at.session_state["comparison_base"], recovery=RECOVERY))
    open_page(at, "perplexity_sweep")
    offered = at.checkbox(key="sweep_recovery")
    differs = next(c.value for c in at.caption if "differs from the settings this page keeps fixed" in c.value)
    assert differs.endswith(": no recovery.")  # the run last submitted (the defaults) has none
    assert offered.value
    assert offered.label == f"Recover every point after pruning ({RECOVERY.mode}, {RECOVERY.steps} steps)"
    assert RECOVERY.describe() in offered.help
    caption = estimate_caption(at)
    assert f"for the recovery ({RECOVERY.describe()})" in caption and ", of which about" in caption
    offered.uncheck().run()
    assert "of which" not in estimate_caption(at)
    at.checkbox(key="sweep_recovery").check()
    at.multiselect(key="sweep_methods").set_value(["spap", "flap"])
    at.slider(key="sweep_range").set_value((0.3, 0.3))
    click(at, "Run sweep")
    finish_job(at, "sweep")

    request = at.session_state["table_requests"]["sweep"]
    assert f"|recovery={asdict(RECOVERY)}" in request.key
    table = RESULT_TABLES.get(request.key)
    assert table[BEFORE_RECOVERY.perplexity].notna().all()
    assert (table[BEFORE_RECOVERY.perplexity] != table["perplexity"]).all()  # the recovery changed every point
    chart = titled(at, "Perplexity vs sparsity")
    for method in ("spap", "flap"):
        row = table[table["method"] == method].iloc[0]
        (solid,) = [trace for trace in chart["data"] if trace["name"] == f"{method}, after recovery"]
        (dashed,) = [trace for trace in chart["data"] if trace["name"] == f"{method}, before recovery"]
        assert dashed["line"] == {"color": method_style(method).colour, "dash": "dash"}
        assert solid["line"]["color"] == method_style(method).colour and solid["line"].get("dash") != "dash"
        assert array(dashed["y"]).tolist() == pytest.approx([row[BEFORE_RECOVERY.perplexity]])
        assert array(solid["y"]).tolist() == pytest.approx([row["perplexity"]])
    numbers = next(frame.value for frame in at.dataframe if "spap, before recovery" in frame.value.columns)
    assert numbers.equals(perplexity_by_sparsity(table))
    reading = next(shown(m.value) for m in at.markdown if shown(m.value).startswith("At 30% sparsity after recovery"))
    assert reading.endswith(recovery_order(table))
