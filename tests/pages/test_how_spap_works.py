"""The "How SPAP works" page through streamlit's AppTest: it draws the path against ρ and what ρ does
to W, each scenario button sets the sliders and tells its story, the advice follows what is
selected, and the slider extremes run cleanly."""

from __future__ import annotations

import numpy as np
import pytest
from app_harness import array, assert_clean, chart_title, open_page, outline, picture_first, start_app, titled
from streamlit.testing.v1 import AppTest
from toy_cases import MISS_WITH_MARGINAL_AND_FIXED, MISS_WITH_PARTIAL_AND_RAMP

from spap_core.methods.toy import ITERATIONS_RANGE, N_PRUNE_RANGE, RHO0_CHOICES, TAU_RANGE, ToySettings, run_toy
from spap_service.lesson import SCENARIOS, path_picture

SCENARIO = {scenario.name: scenario for scenario in SCENARIOS}
WIDGETS = {"rho0": "toy_rho0", "tau": "toy_tau", "balance": "toy_t", "momentum": "toy_alpha", "iterations": "toy_K",
           "n_prune": "toy_lambda", "score": "toy_score", "schedule": "toy_schedule",
           "correlated": "toy_correlated", "seed": "toy_seed"}


@pytest.fixture()
def page(app_files) -> AppTest:
    at = start_app()
    open_page(at, "how_spap_works")
    return at


def widget_settings(at: AppTest) -> ToySettings:
    return ToySettings(**{name: at.session_state[key] for name, key in WIDGETS.items()})


def test_page_shows_the_path_against_rho_and_what_rho_does_to_w(page):
    outcome = run_toy(ToySettings())
    path = titled(page, "Relaxed mask s per channel")
    for axis in ("xaxis", "xaxis2"):  # both panels: the value of ρ, as powers of ten
        assert path["layout"][axis]["type"] == "log" and path["layout"][axis]["exponentformat"] == "power"
    assert {trace["legendgroup"] for trace in path["data"]} == {str(c) for c in range(outcome.width)}
    for trace in path["data"]:
        np.testing.assert_allclose(array(trace["x"]), outcome.rhos)  # ρ itself, not the iteration number
    masks = {int(t["legendgroup"]): array(t["y"]) for t in path["data"] if t.get("xaxis", "x") == "x"}
    norms = {int(t["legendgroup"]): array(t["y"]) for t in path["data"] if t.get("xaxis") == "x2"}
    assert len(masks) == len(norms) == outcome.width
    np.testing.assert_allclose([masks[c][-1] for c in range(outcome.width)], outcome.steps[-1].soft_mask, rtol=1e-6)
    assert max(norms[c][-1] for c in outcome.spap_pruned) < 0.5  # the marked columns pushed towards 0
    kept = [c for c in range(outcome.width) if c not in outcome.spap_pruned]
    assert any(abs(norms[c][-1] - 1) > 0.01 for c in kept)  # and the kept ones compensating
    readout = titled(page, "Binary read-out")
    refit_bars = next(t for t in readout["data"] if t.get("name") == "after the refit")
    assert np.all(array(refit_bars["y"])[list(outcome.spap_pruned)] == 0)
    objective = titled(page, "Objective and violation")
    assert all(axis.get("type") != "log" for name, axis in objective["layout"].items() if name.startswith("yaxis"))
    captions = " ".join(c.value for c in page.caption)
    assert "does not end binary" in captions and "most of the way to 0" in captions
    assert any("**ramp**" in m.value for m in page.markdown)


@pytest.mark.parametrize("name", [scenario.name for scenario in SCENARIOS])
def test_each_scenario_button_sets_the_sliders_and_tells_its_story(page, name):
    scenario = SCENARIO[name]
    page.button(key=f"toy_scenario_{name}").click().run()
    assert_clean(page)
    assert widget_settings(page) == scenario.settings
    story = scenario.story(run_toy(scenario.settings))
    assert any(info.value == f"**{name}.** {story}" for info in page.info)
    for title in ("Relaxed mask s per channel", "Binary read-out", "Objective and violation"):
        titled(page, title)
    table = page.table[0].value
    assert list(table.index) == ["SPAP", "exact (every mask)"]
    missed = name == "SPAP misses it (correlated channels)"
    assert bool(page.warning) == missed and bool(page.success) == (not missed)
    page.slider(key="toy_lambda").set_value(scenario.settings.n_prune + 1).run()  # leaving the scenario
    assert not any(info.value.startswith(f"**{name}.**") for info in page.info)


def test_page_advice_follows_what_is_selected(page):
    for settings in (MISS_WITH_PARTIAL_AND_RAMP, MISS_WITH_MARGINAL_AND_FIXED):
        for field_name, key in WIDGETS.items():
            page.session_state[key] = getattr(settings, field_name)
        page.run()
        assert_clean(page)
        assert page.warning, "SPAP should miss the optimum here"
        text = " ".join(info.value for info in page.info)
        assert ("partial score" in text) == (settings.score != "partial")
        assert ("ramp schedule" in text) == (settings.schedule != "ramp")


def test_page_survives_the_slider_extremes(page):
    page.select_slider(key="toy_rho0").set_value(RHO0_CHOICES[-1])
    page.slider(key="toy_tau").set_value(TAU_RANGE[1])
    page.slider(key="toy_K").set_value(ITERATIONS_RANGE[1])
    page.slider(key="toy_lambda").set_value(N_PRUNE_RANGE[1]).run()
    assert_clean(page)
    objective = titled(page, "Objective and violation")
    line = next(t for t in objective["data"] if t.get("name") == "objective")
    assert len(array(line["y"])) == ITERATIONS_RANGE[1] and np.all(array(line["y"]) > 1.0)



def test_page_opens_with_the_path_chart_and_a_plain_sentence_and_keeps_the_maths_below(page):
    figure, sentence = picture_first(page)
    assert chart_title(figure).startswith("Relaxed mask s per channel")
    assert sentence == path_picture(run_toy(ToySettings()))
    assert not any(notation in sentence for notation in ("$", "h̄", "diag", "λ", "‖"))  # plain words
    page.slider(key="toy_lambda").set_value(1).run()  # the sentence follows the run drawn
    assert picture_first(page)[1] == path_picture(run_toy(ToySettings(n_prune=1)))
    maths = [(kind, element) for kind, expander, element in outline(page) if expander == "The maths"]
    formulas = [element.value for kind, element in maths if kind == "latex"]
    assert len(formulas) == 1 and r"\min_{W,s}" in formulas[0] and r"s\in\{0,1\}^n" in formulas[0]  # one block
    assert any("**The path with these settings.**" in element.value for kind, element in maths if kind == "markdown")
