"""Run SPAP's recovery after pruning through streamlit's AppTest on the tiny model: its widgets
come from RECOVERY_PARAMETERS, a LoRA run shows the perplexity before and after it with their
verdict and its loss curve, a cancel during it keeps the pruned model as it was before it, its share
link fills the form again, and a run saved before recoveries existed still opens."""

from __future__ import annotations

import json
import math
import shutil
from urllib.parse import parse_qsl, urlsplit

import pytest
from app_harness import (
    APP,
    JOB_HANG_GUARD_S,
    SCRIPT_TIMEOUT_S,
    array,
    assert_clean,
    click,
    finish_job,
    open_page,
    session_job,
    shown,
    start_app,
    titled,
)
from streamlit.testing.v1 import AppTest

from pages._recovery import RECOVERY_CHART_TITLE
from spap_core.pipeline.parameters import RECOVERY_PARAMETERS, recovery_values
from spap_core.recovery.settings import DISTILL_KEYS, RECOVERY_MODE, RecoverySettings
from spap_service.compare import recovery_summary, recovery_verdict_line

STEPS, HELDOUT_EVERY = 3, 2
WIDGET_KINDS = ("slider", "number_input", "selectbox", "checkbox")


def widgets(at: AppTest) -> dict:
    return {w.key: w for kind in WIDGET_KINDS for w in at.get(kind) if w.key}


@pytest.fixture(scope="module")
def recovered_app(app_files) -> AppTest:
    """One session that has finished a SPAP run at 25 % sparsity with 3 steps of LoRA recovery."""
    at = start_app()
    open_page(at, "run_spap")
    at.slider(key="sparsity").set_value(0.25)
    at.slider(key="K").set_value(4)
    at.selectbox(key=RECOVERY_MODE).set_value("lora").run()
    at.number_input(key="recover_steps").set_value(STEPS)
    at.number_input(key="recover_heldout_every").set_value(HELDOUT_EVERY).run()
    assert_clean(at)
    click(at, "Run SPAP")
    assert_clean(at)
    finish_job(at, "run")
    return at


def test_every_recovery_setting_has_a_widget_with_its_default_where_its_mode_uses_it(app_files):
    at = start_app()
    open_page(at, "run_spap")
    defaults = recovery_values(RecoverySettings())
    assert set(widgets(at)) & {p.key for p in RECOVERY_PARAMETERS} == {RECOVERY_MODE}  # no recovery: the mode alone
    at.selectbox(key=RECOVERY_MODE).set_value("lora").run()
    shown_keys = set(widgets(at)) & {p.key for p in RECOVERY_PARAMETERS}
    assert shown_keys == {p.key for p in RECOVERY_PARAMETERS} - DISTILL_KEYS
    at.selectbox(key=RECOVERY_MODE).set_value("lora+distill").run()
    assert_clean(at)
    found = widgets(at)
    for declared in RECOVERY_PARAMETERS:
        assert declared.key in found, f"no widget for {declared.key}"
        if declared.key != RECOVERY_MODE:
            assert found[declared.key].value == pytest.approx(defaults[declared.key]), declared.key
        assert (found[declared.key].min, found[declared.key].max) == (declared.low, declared.high) \
            if declared.low is not None else found[declared.key].options == list(declared.choices)
    captions = {c.value for c in at.caption}
    assert all(declared.help in captions for declared in RECOVERY_PARAMETERS)
    estimate = next(c.value for c in at.caption if c.value.startswith("This run:"))
    assert f"for the recovery ({RecoverySettings(mode='lora+distill').describe()})" in estimate


def test_a_lora_run_shows_its_perplexity_before_and_after_recovery_the_verdict_and_the_curve(recovered_app):
    at = recovered_app
    record = at.session_state["latest_run"].record
    assert record["ppl_before_recovery"] is not None and record["recovery"]["steps_done"] == STEPS
    markdown = [shown(m.value) for m in at.markdown]
    assert recovery_summary(record) in markdown and recovery_verdict_line(record) in markdown
    assert recovery_summary(record).startswith("Pruned (before recovery): ")
    curve = titled(at, RECOVERY_CHART_TITLE)
    loss, heldout = curve["data"]
    assert array(loss["x"]).tolist() == list(range(1, STEPS + 1))
    assert array(loss["y"]).tolist() == pytest.approx(record["recovery"]["losses"])
    assert array(heldout["x"]).tolist() == [step for step, _ in record["recovery"]["heldout_ppl"]] == [2, 3]
    steps = session_job(at, "run").progress.recovery  # what the live chart drew, step by step
    assert [step.step for step in steps] == [1, 2, 3] and [step.loss for step in steps] == record["recovery"]["losses"]
    assert [step.heldout_ppl is not None for step in steps] == [False, True, True]


def test_the_share_link_fills_the_form_with_the_runs_recovery(recovered_app):
    at = recovered_app
    link = next(code.value for code in at.code if "recover=" in code.value)
    query = dict(parse_qsl(urlsplit(link).query))
    assert not DISTILL_KEYS & query.keys()  # lora does not distil: the link carries only what the run used
    opened = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    opened.switch_page("pages/run_spap.py")
    opened.query_params.update(query)
    opened.run()
    assert_clean(opened)
    assert not any("partly ignored" in w.value for w in opened.warning)
    found = widgets(opened)
    asked = recovery_values(at.session_state["latest_run"].request.recovery)
    for key, value in asked.items():
        if key not in DISTILL_KEYS:
            assert found[key].value == pytest.approx(value) if isinstance(value, float) else found[key].value == value
    assert asked[RECOVERY_MODE] == "lora" and asked["recover_steps"] == STEPS


def test_a_run_saved_before_recoveries_existed_still_opens_with_a_dash_before_recovery(recovered_app):
    saved = recovered_app.session_state["latest_run"].saved_to
    older = saved.with_name(saved.name[:-1] + ("0" if saved.name[-1] != "0" else "1"))
    shutil.copytree(saved, older)
    try:
        record = json.loads((older / "results.json").read_text())
        for key in ("ppl_before_recovery", "ppl_before_recovery_ci95", "window_nll_before_recovery", "recovery"):
            del record[key]
        (older / "results.json").write_text(json.dumps(record))
        at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
        at.query_params["run"] = older.name
        at.switch_page("pages/run_spap.py")
        at.run()
        assert_clean(at)
        assert at.session_state["latest_run"].saved_to == older
        assert not any(shown(m.value).startswith("Pruned (before recovery)") for m in at.markdown)
        assert RECOVERY_CHART_TITLE not in json.dumps([c.proto.spec for c in at.get("plotly_chart")])
        assert at.selectbox(key=RECOVERY_MODE).value == "none"
        open_page(recovered_app, "run_spap")  # the saved-runs table lists this browser's runs: both are its
        table = next(frame.value for frame in recovered_app.dataframe if "ppl before recovery" in frame.value.columns)
        before = dict(zip(table["run"], table["ppl before recovery"]))
        assert math.isnan(before[older.name])
        assert before[saved.name] == pytest.approx(recovered_app.session_state["latest_run"].record[
            "ppl_before_recovery"])
    finally:
        shutil.rmtree(older)


def test_a_recovering_run_draws_its_curve_as_it_grows_and_a_cancel_keeps_the_model_before_recovery(app_files):
    """The run waits after its second recovery step until the page has been drawn and Cancel
    clicked, so the page always sees a recovery under way; the run then finishes with the pruned
    model as it was before recovery, and the page says so."""
    import threading

    from spap_service.jobs import JobStatus, shared_queue
    from spap_service.runs import JobRunProgress

    reached, clicked, original = threading.Event(), threading.Event(), JobRunProgress.recovery_step

    def held_at_second_step(self, step):
        original(self, step)
        if step.step == 2:
            reached.set()
            assert clicked.wait(JOB_HANG_GUARD_S)

    at = start_app()
    open_page(at, "run_spap")
    at.selectbox(key=RECOVERY_MODE).set_value("lora").run()
    at.number_input(key="recover_steps").set_value(5)
    patch = pytest.MonkeyPatch()
    patch.setattr(JobRunProgress, "recovery_step", held_at_second_step)
    try:
        click(at, "Run SPAP")
        job = session_job(at, "run")
        assert reached.wait(JOB_HANG_GUARD_S)
        at.run()
        assert_clean(at)
        assert any(c.value.startswith("Recovery step 2 of 5 · loss ") for c in at.caption)
        live = titled(at, RECOVERY_CHART_TITLE)
        assert len(array(live["data"][0]["x"])) == 2 and live["layout"]["xaxis"]["range"] == [0.5, 5.5]
        at.button(key=f"cancel-{job.id}").click().run()
        clicked.set()
        assert shared_queue().wait(job, JOB_HANG_GUARD_S)
    finally:
        clicked.set()
        patch.undo()
    at.run()
    assert_clean(at)
    assert job.status is JobStatus.DONE, job.status
    record = at.session_state["latest_run"].record
    assert record["recovery_cancelled"]["steps_done"] == 2 and record["ppl_before_recovery"] is None
    assert [shown(i.value) for i in at.info if i.value.startswith("Recovery cancelled")] == [
        "Recovery cancelled after 2 of 5 steps: the pruned model is shown as it was before recovery."]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Perplexity, pruned"] == f"{record['ppl']:.2f}"  # measured before the recovery
    assert not any(shown(m.value).startswith("Pruned (before recovery)") for m in at.markdown)


def test_a_job_cancelled_in_a_recovery_says_nothing_of_it_was_kept():
    """A run over several calibration seeds is cancelled whole by a cancel in any seed's recovery."""
    from pages._job_progress import cancelled_text
    from spap_core.recovery.loop import RecoveryStep
    from spap_service.jobs import Job, JobStatus

    job = Job(id="1", owner="me", label="SPAP run over 2 calibration seeds", kind="run", function=lambda *_: None,
              status=JobStatus.CANCELLED, error="Cancelled during the recovery after pruning, after 2 of 5 steps.")
    job.reporter.update(recovery=tuple(RecoveryStep(step, 3.0, None, 1.0, 5) for step in (1, 2)))
    assert cancelled_text(job).startswith("SPAP run over 2 calibration seeds was cancelled during its recovery, "
                                          "after 2 of 5 steps: a cancelled run keeps no result")


def test_the_sweep_takes_the_submitted_settings_with_the_recovery_and_offers_it(recovered_app):
    at = recovered_app
    submitted = at.session_state["submitted_run"]
    assert submitted.recovery.mode == "lora"
    open_page(at, "perplexity_sweep")
    base = at.session_state["comparison_base"]
    assert base.recovery == submitted.recovery and base.settings == submitted.settings
    assert submitted.recovery.describe() in at.checkbox(key="sweep_recovery").help


def test_the_progress_bar_counts_the_recovery_and_the_perplexity_after_it():
    from pages._job_progress import progress_fraction
    from spap_core.recovery.loop import RecoveryStep
    from spap_service.jobs import JobProgress

    def step(number: int) -> RecoveryStep:
        return RecoveryStep(number, 3.0, None, float(number), 10)

    # 4 layers, the perplexity before the recovery, the recovery, the perplexity after it: 7 parts
    pruned = JobProgress(layer=4, n_layers=4, batch=8, n_batches=8, recovery_steps=10)
    assert progress_fraction(pruned) == pytest.approx(5 / 7)
    recovering = JobProgress(**{**vars(pruned), "batch": 0, "recovery": (step(1), step(2), step(3))})
    assert progress_fraction(recovering) == pytest.approx((5 + 3 / 10) / 7)
    evaluating_after = JobProgress(**{**vars(recovering), "batch": 2, "recovery": tuple(map(step, range(1, 11)))})
    assert progress_fraction(evaluating_after) == pytest.approx((6 + 2 / 8) / 7)
    without = JobProgress(layer=4, n_layers=4, batch=8, n_batches=8)
    assert progress_fraction(without) == 1.0


def test_a_link_with_a_recovery_setting_out_of_its_range_says_it_was_ignored(app_files):
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    at.switch_page("pages/run_spap.py")
    at.query_params.update({RECOVERY_MODE: "lora", "recover_lr": "nan", "recover_steps": "0", "recover_rank": "4"})
    at.run()
    assert not at.exception
    warning = shown(next(w.value for w in at.warning if "partly ignored" in w.value))
    assert "recover_lr = nan:" in warning and "recover_steps = 0:" in warning
    assert "recover_rank" not in warning and "recover =" not in warning  # valid ones are taken
    assert at.number_input(key="recover_rank").value == 4 and at.selectbox(key=RECOVERY_MODE).value == "lora"
