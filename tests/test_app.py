"""Every page of the Streamlit app through streamlit's AppTest, on a tiny random Llama and texts
made of its vocabulary: widgets exist, background jobs (run, sweep, scan, latency) complete,
charts carry the expected traces and frames, bad input gives a clear message, never an exception.

Jobs are awaited through the job queue itself (an event, not a timer); the bound on each wait only
turns a hang into a failure.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import tiny_llama, tiny_tokenizer, word_text
from spap_core.jobs import JobStatus, shared_queue
from spap_core.methods.spap import PenaltySettings

APP = Path(__file__).resolve().parents[1] / "app.py"
SCRIPT_TIMEOUT_S = 120
JOB_HANG_GUARD_S = 600


@pytest.fixture(scope="module")
def app_files(tmp_path_factory):
    """A tiny model directory and calibration/evaluation texts, wired in through the app's env vars."""
    folder = tmp_path_factory.mktemp("app")
    model_dir = folder / "tiny-llama"
    tiny_llama().save_pretrained(model_dir, safe_serialization=True)
    tiny_tokenizer().save_pretrained(model_dir)
    calibration, evaluation = folder / "calibration.txt", folder / "evaluation.txt"
    calibration.write_text(word_text(5000, seed=1))
    evaluation.write_text(word_text(3000, seed=2))
    patch = pytest.MonkeyPatch()
    patch.setenv("SPAP_APP_MODEL", str(model_dir))
    patch.setenv("SPAP_APP_CALIB_FILE", str(calibration))
    patch.setenv("SPAP_APP_EVAL_FILE", str(evaluation))
    patch.setenv("SPAP_CACHE_DIR", str(folder / "cache"))
    patch.setenv("HF_HUB_OFFLINE", "1")  # the hub check answers at once, and says "unreachable"
    yield {"model": model_dir, "calibration": calibration, "evaluation": evaluation}
    patch.undo()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def start_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    at.run()
    assert_clean(at)
    return at


def open_page(at: AppTest, name: str) -> None:
    at.switch_page(f"pages/{name}.py")
    at.run()
    assert_clean(at)


def click(at: AppTest, label: str) -> None:
    next(button for button in at.button if button.label == label).click()
    at.run()


def session_job(at: AppTest, kind: str):
    return at.session_state["jobs"][kind]


def finish_job(at: AppTest, kind: str) -> None:
    """Wait for this session's `kind` job on the queue, then redraw the page with its result."""
    job = session_job(at, kind)
    assert shared_queue().wait(job, JOB_HANG_GUARD_S), f"{job.label} hung"
    assert job.status is JobStatus.DONE, job.error
    at.run()
    assert_clean(at)


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def array(value) -> np.ndarray:
    """A figure array from its JSON: a plain list, or plotly's typed array {dtype, bdata, shape}."""
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value)


def titled(at: AppTest, start: str) -> dict:
    matches = [f for f in figures(at) if f["layout"].get("title", {}).get("text", "").startswith(start)]
    assert matches, f"no chart titled {start!r}"
    return matches[0]


RUN_ITERATIONS = 6


@pytest.fixture(scope="module")
def ran_app(app_files) -> AppTest:
    """One session that has finished a SPAP run at 25 % sparsity with K = 6."""
    at = start_app()
    open_page(at, "run_spap")
    at.slider(key="sparsity").set_value(0.25)
    at.slider(key="K").set_value(RUN_ITERATIONS)
    click(at, "Run SPAP")
    assert_clean(at)
    finish_job(at, "run")
    return at


def test_model_and_data_page_shows_the_model_and_data_choices(app_files):
    at = start_app()  # the default page
    assert at.title[0].value == "Model & data"
    assert any("hub is unreachable" in w.value for w in at.warning)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Decoder layers"] == "2" and metrics["MLP width"] == "128"
    split = titled(at, "Parameter split")
    assert set(split["data"][0]["labels"]) == {"attention", "MLP", "embeddings", "norms and other"}
    assert {r.label for r in at.radio} >= {"Model source", "Calibration text", "Evaluation text"}
    assert {b.label for b in at.button} >= {"Load model", "Use this data"}
    assert str(app_files["calibration"]) in [t.value for t in at.text_input]
    assert any("tiny-llama" in c.value for c in at.sidebar.caption)
    assert any("Job queue" in c.value for c in at.sidebar.caption)


def test_model_and_data_page_refuses_bad_input_with_a_clear_message(app_files, tmp_path):
    at = start_app()
    at.text_input(key="calibration_path").set_value(str(tmp_path / "missing.txt"))
    click(at, "Use this data")
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    at.text_input(key="calibration_path").set_value(str(binary))
    click(at, "Use this data")
    assert any("binary" in e.value for e in at.error)
    at.radio(key="evaluation_kind").set_value("WikiText-2 from the hub").run()
    assert any("hub is unreachable" in w.value for w in at.warning)
    at.text_input(key="model_path").set_value(str(tmp_path / "no-model"))
    click(at, "Load model")
    assert not at.exception
    assert any("could not be loaded" in e.value for e in at.error)
    at.switch_page("pages/run_spap.py").run()
    assert not at.exception
    assert any("could not be loaded" in e.value for e in at.error)


def test_run_page_has_every_hyperparameter_in_the_form(app_files):
    from spap_core.methods.registry import PruneSettings

    defaults = PruneSettings()
    at = start_app()
    open_page(at, "run_spap")
    for key in ("sparsity", "K", "tau", "t", "alpha", "beta", "am_rounds", "am_steps"):
        assert at.slider(key=key) is not None
    for key in ("rho0", "delta", "am_lr", "am_batch", "nsamples", "seqlen", "seed"):
        assert at.number_input(key=key) is not None
    assert at.selectbox(key="prior").value == defaults.refit.prior
    assert at.selectbox(key="precision").value == defaults.refit.precision
    assert at.selectbox(key="score").value == defaults.penalty.score
    assert at.selectbox(key="schedule").value == defaults.penalty.schedule
    assert at.selectbox(key="start").value == defaults.penalty.start
    assert at.checkbox(key="bias").value is defaults.refit.bias
    assert at.slider(key="K").value == defaults.penalty.iterations
    assert at.number_input(key="delta").value == defaults.refit.ridge
    assert at.number_input(key="nsamples").value == 8  # the CPU preset
    assert at.slider(key="am_rounds").value == 0 < defaults.altmin.rounds  # off in the CPU preset only
    assert at.number_input(key="am_lr").value == defaults.altmin.lr
    assert len(at.caption) >= 22  # one explanation per setting


def test_run_completes_and_shows_results_downloads_and_share_link(ran_app):
    at = ran_app
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Perplexity, dense"]) > 0 and float(metrics["Perplexity, pruned"]) > 0
    assert "M" in metrics["Parameters"]
    assert {b.label for b in at.get("download_button")} == {
        "Pruned model (.zip)", "Metrics (.json)", "ρ trace (.csv)", "Layers (.csv)"}
    assert "sparsity=0.25" in at.code[0].value and f"K={RUN_ITERATIONS}" in at.code[0].value
    history = at.dataframe[0].value
    assert len(history) == 1 and history["sparsity"].iloc[0] == 0.25
    assert titled(at, "Relative reconstruction error per layer")["data"][0]["type"] == "bar"
    outcome = at.session_state["latest_run"]
    assert outcome.result.params_after < outcome.result.params_before
    assert len(outcome.result.trace) == 2 * RUN_ITERATIONS


def test_pruned_model_download_is_a_loadable_zip(ran_app, tmp_path):
    import zipfile

    from pages._experiments import pruned_model_zip
    from spap_core.models import load_model

    archive = tmp_path / "pruned.zip"
    archive.write_bytes(pruned_model_zip(ran_app.session_state["latest_run"]))
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(tmp_path)
    reloaded = load_model(str(tmp_path / "pruned-model"), device="cpu")
    assert reloaded.model.config.intermediate_size == 96


def test_mask_evolution_page_plots_the_soft_mask_per_iteration(ran_app):
    at = ran_app
    open_page(at, "mask_evolution")
    heatmap = titled(at, "Layer 0: s over ρ iterations")
    assert array(heatmap["data"][0]["z"]).shape == (RUN_ITERATIONS, 128)
    assert len(titled(at, "Layer 0: s per channel")["frames"]) == RUN_ITERATIONS
    animated = titled(at, "All layers")
    assert len(animated["frames"]) == RUN_ITERATIONS
    assert [step["label"] for step in animated["layout"]["sliders"][0]["steps"]][:2] == ["1", "2"]
    binary = titled(at, "From fractional to binary")
    assert len(binary["data"]) == 2  # one line per layer
    assert len(titled(at, "Final s per layer")["data"]) == 1
    at.slider(key="mask_layer").set_value(1).run()
    assert_clean(at)
    titled(at, "Layer 1: s over ρ iterations")


def test_scores_page_shows_distributions_thresholds_and_overlaps(ran_app):
    at = ran_app
    open_page(at, "scores")
    metrics = {"magnitude", "wanda-sp", "flap", "spap_first", "spap_last"}
    histogram = titled(at, "Layer 0: 128 channels, λ = 32 pruned")
    assert {trace["name"] for trace in histogram["data"]} == metrics
    assert any(shape.get("x0") == 0 for shape in histogram["layout"]["shapes"])  # the λ-threshold
    for chart in ("Violin", "ECDF"):
        at.radio(key="scores_chart").set_value(chart).run()
        assert_clean(at)
        assert {trace["name"] for trace in titled(at, "Layer 0")["data"]} == metrics
    jaccard = titled(at, "Jaccard overlap")
    overlap = array(jaccard["data"][0]["z"])
    assert overlap.shape == (6, 6) and np.allclose(np.diag(overlap), 1.0)
    at.radio(key="scores_scope").set_value("all layers (mean)").run()
    assert_clean(at)


def test_latency_page_measures_dense_and_pruned(ran_app):
    at = ran_app
    open_page(at, "latency")
    at.number_input(key="latency_seqlen").set_value(16)
    at.number_input(key="latency_decode").set_value(2)
    at.number_input(key="latency_repeats").set_value(2)
    at.number_input(key="latency_warmup").set_value(0)
    click(at, "Measure")
    finish_job(at, "latency")
    bars = figures(at)[0]
    timed = [trace for trace in bars["data"] if "error_y" in trace]
    assert len(timed) == 4 and all(trace["error_y"]["symmetric"] is False for trace in timed)
    ratios = titled(at, "Measured speed-ups")
    assert {trace["name"] for trace in ratios["data"]} == {"measured", "theory"}


def test_sweep_runs_as_a_job_and_is_cached(ran_app):
    at = ran_app
    open_page(at, "perplexity_sweep")
    at.multiselect(key="sweep_methods").set_value(["spap", "magnitude"])
    at.slider(key="sweep_range").set_value((0.2, 0.4))
    at.selectbox(key="sweep_step").set_value(0.2)
    click(at, "Run sweep")
    finish_job(at, "sweep")
    chart = titled(at, "Perplexity vs sparsity")
    methods = [trace for trace in chart["data"] if not trace["name"].startswith("dense")]
    assert {trace["name"] for trace in methods} == {"spap", "magnitude"}
    assert all(len(array(trace["x"])) == 2 for trace in methods)
    assert any(trace["name"].startswith("dense") for trace in chart["data"])
    assert any("evaluation:" in annotation["text"] for annotation in chart["layout"]["annotations"])
    first_job = session_job(at, "sweep")
    open_page(at, "scores")
    open_page(at, "perplexity_sweep")  # revisiting shows the cached sweep at once
    titled(at, "Perplexity vs sparsity")
    at.multiselect(key="sweep_methods").set_value(["spap", "magnitude"])
    at.slider(key="sweep_range").set_value((0.2, 0.4))
    at.selectbox(key="sweep_step").set_value(0.2)
    click(at, "Run sweep")
    assert session_job(at, "sweep") is first_job  # served from the cache, no new job
    titled(at, "Perplexity vs sparsity")


def test_sensitivity_scan_plots_error_and_perplexity(ran_app):
    at = ran_app
    open_page(at, "sensitivity")
    at.selectbox(key="scan_parameter").set_value("α (mask momentum)").run()
    at.slider(key="scan_points").set_value(2)
    click(at, "Run scan")
    finish_job(at, "scan")
    chart = figures(at)[0]
    assert len(chart["data"]) == 2 and all(len(array(trace["x"])) == 2 for trace in chart["data"])
    assert at.dataframe[0].value.shape[0] == 2


def test_sensitivity_refuses_an_invalid_range(ran_app):
    at = ran_app
    open_page(at, "sensitivity")
    at.selectbox(key="scan_parameter").set_value("τ (penalty growth)").run()
    at.number_input(key="scan_low_τ (penalty growth)").set_value(0.5)
    click(at, "Run scan")
    assert not at.exception
    assert any("τ must be > 1" in e.value for e in at.error)


def test_how_spap_works_compares_spap_with_the_exact_optimum(app_files):
    at = start_app()
    open_page(at, "how_spap_works")
    path = titled(at, "Relaxed mask s per channel")
    assert len({trace["legendgroup"] for trace in path["data"]}) == 8
    assert all(len(array(trace["x"])) == PenaltySettings().iterations for trace in path["data"])
    table = at.table[0].value
    assert list(table.index) == ["SPAP", "exact (every mask)"]
    at.slider(key="toy_lambda").set_value(5).run()
    at.slider(key="toy_K").set_value(7).run()
    at.radio(key="toy_score").set_value("partial")
    at.radio(key="toy_schedule").set_value("ramp")
    at.checkbox(key="toy_correlated").check().run()
    assert_clean(at)
    assert all(len(array(trace["x"])) == 7 for trace in titled(at, "Relaxed mask s per channel")["data"])


def test_queued_and_running_runs_can_be_cancelled(app_files):
    import threading

    release = threading.Event()
    blocker = shared_queue().submit(lambda progress, cancel: release.wait(JOB_HANG_GUARD_S), owner="someone else",
                                    label="another session's job")
    try:
        at = start_app()
        # AppTest keeps the router's sidebar only on the default page, so the queue is checked here
        assert any("another session's job (another session)" in c.value for c in at.sidebar.caption)
        open_page(at, "run_spap")
        click(at, "Run SPAP")
        assert any("Queued, 1 ahead" in info.value for info in at.info)
        at.button(key=f"cancel-{session_job(at, 'run').id}").click().run()
        assert session_job(at, "run").status is JobStatus.CANCELLED
        assert any("cancelled" in w.value for w in at.warning)
    finally:
        release.set()
        shared_queue().wait(blocker, JOB_HANG_GUARD_S)

    at.slider(key="am_rounds").set_value(10)
    at.slider(key="am_steps").set_value(200)
    at.slider(key="K").set_value(60)
    click(at, "Run SPAP")
    job = session_job(at, "run")
    assert not job.status.finished
    at.button(key=f"cancel-{job.id}").click().run()
    assert shared_queue().wait(job, JOB_HANG_GUARD_S)
    at.run()
    assert job.status in (JobStatus.CANCELLED, JobStatus.DONE)  # DONE only if it finished before the click
    if job.status is JobStatus.CANCELLED:
        assert any("cancelled" in w.value for w in at.warning)
    assert not at.exception


def test_failed_run_shows_the_library_message(app_files):
    at = start_app()
    open_page(at, "run_spap")
    at.number_input(key="nsamples").set_value(1024)
    at.number_input(key="seqlen").set_value(4096)
    click(at, "Run SPAP")
    job = session_job(at, "run")
    assert shared_queue().wait(job, JOB_HANG_GUARD_S)
    at.run()
    assert job.status is JobStatus.FAILED
    assert not at.exception
    assert any("lower the number of samples or the window length" in e.value for e in at.error)


def test_two_sessions_run_side_by_side_without_touching_the_shared_model(app_files):
    first, second = start_app(), start_app()
    for at, sparsity in ((first, 0.25), (second, 0.5)):
        open_page(at, "run_spap")
        at.slider(key="sparsity").set_value(sparsity)
        at.slider(key="K").set_value(3)
        click(at, "Run SPAP")
    finish_job(first, "run")
    finish_job(second, "run")
    outcome_1, outcome_2 = first.session_state["latest_run"], second.session_state["latest_run"]
    assert outcome_1.request.settings.sparsity == 0.25 and outcome_2.request.settings.sparsity == 0.5
    assert outcome_1.result.model.config.intermediate_size == 96
    assert outcome_2.result.model.config.intermediate_size == 64
    assert outcome_1.dense.perplexity == outcome_2.dense.perplexity  # the dense model is shared and unchanged
    reference = tiny_llama()  # the weights the tiny model was saved with
    from pages._shared import _load_model_shared

    shared = _load_model_shared(str(app_files["model"]), "auto", "auto").model
    for name, parameter in reference.state_dict().items():
        assert (shared.state_dict()[name] == parameter).all(), name


def test_finished_runs_are_saved_and_a_new_session_can_reload_them(ran_app):
    """Durability: the run is in the results folder as soon as it finishes; another session (as
    after a restart or a refresh) lists it, loads it, and the inspection pages show it."""
    outcome = ran_app.session_state["latest_run"]
    assert outcome.saved_to is not None and (outcome.saved_to / "results.json").is_file()

    at = start_app()
    open_page(at, "run_spap")
    at.selectbox(key="saved_run").set_value(str(outcome.saved_to)).run()
    click(at, "Load this run")
    assert_clean(at)
    loaded = at.session_state["latest_run"]
    assert not loaded.has_model and loaded.saved_to == outcome.saved_to
    assert loaded.record["ppl"] == outcome.record["ppl"]
    assert any(m.label == "Perplexity, pruned" and m.value == f"{outcome.record['ppl']:.2f}" for m in at.metric)
    for page in ("mask_evolution", "scores"):
        open_page(at, page)
        assert figures(at)
    open_page(at, "latency")
    assert any("not the pruned weights" in info.value for info in at.info)


def test_out_of_memory_during_a_run_ends_it_with_advice_and_the_app_keeps_serving(app_files, monkeypatch):
    from spap_core.jobs import OUT_OF_MEMORY_MESSAGE
    from spap_core.stats import GramAccumulator

    def exhausted(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes.")

    at = start_app()
    open_page(at, "run_spap")
    with monkeypatch.context() as patch:
        patch.setattr(GramAccumulator, "add", exhausted)  # the calibration statistics run out of memory
        click(at, "Run SPAP")
        job = session_job(at, "run")
        assert shared_queue().wait(job, JOB_HANG_GUARD_S)
    at.run()
    assert job.status is JobStatus.FAILED and not at.exception
    assert any(OUT_OF_MEMORY_MESSAGE in e.value for e in at.error)
    click(at, "Run SPAP")  # with the memory back, the same session runs again
    finish_job(at, "run")
    assert at.session_state["latest_run"].pruned.perplexity > 0
