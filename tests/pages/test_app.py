"""Every page of the Streamlit app through streamlit's AppTest, on a tiny random Llama and texts
made of its vocabulary: widgets exist, background jobs (run, sweep, scan, latency) complete,
charts carry the expected traces and frames, bad input gives a clear message, never an exception.

Jobs are awaited through the job queue itself (an event, not a timer); the bound on each wait only
turns a hang into a failure.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from app_harness import (
    APP,
    JOB_HANG_GUARD_S,
    SCRIPT_TIMEOUT_S,
    array,
    assert_clean,
    chart_title,
    click,
    figures,
    finish_job,
    generate_greedily,
    open_page,
    outline,
    picture_first,
    run_spap,
    session_job,
    shown,
    start_app,
    titled,
)
from conftest import tiny_llama
from streamlit.testing.v1 import AppTest

from pages._palette import DENSE, method_style
from spap_core.evaluation.intervals import seeded_comparison
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.methods.spap import PenaltySettings
from spap_core.pipeline.parameters import BY_KEY
from spap_core.storage.weights import WEIGHTS_FILE
from spap_service.analysis import (
    SPAP_PRUNED,
    changed_mind_counts,
    mask_picture,
    parameter_picture,
    readout_masks,
    scores_picture,
    soft_masks,
)
from spap_service.estimates import duration
from spap_service.jobs import JobStatus, shared_queue
from spap_service.uncertainty import ratio_interval

RUN_ITERATIONS = 6


@pytest.fixture(scope="module")
def ran_app(app_files) -> AppTest:
    """One session that has finished a SPAP run at 25 % sparsity with K = 6."""
    return run_spap(0.25, RUN_ITERATIONS)


def test_start_page_proposes_the_lesson_path(app_files):
    at = start_app()  # the default page
    assert at.title[0].value == "SPAP Explorer"
    links = [link.label for link in at.get("page_link")]
    assert links[:5] == ["1. How SPAP works", "2. Run SPAP", "3. Mask evolution", "4. Scores",
                         "5. Perplexity vs sparsity"]
    assert any("No run yet" in c.value for c in at.caption)
    # AppTest keeps the router's sidebar only on the default page, so it is checked here
    assert any("tiny-llama" in shown(c.value) for c in at.sidebar.caption)
    assert any("Job queue" in c.value for c in at.sidebar.caption)


def test_model_and_data_page_shows_the_model_and_data_choices(app_files):
    at = start_app()
    open_page(at, "model_data")
    assert at.title[0].value == "Model & data"
    assert any("hub is unreachable" in w.value for w in at.warning)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Decoder layers"] == "2" and metrics["MLP width"] == "128"
    split = titled(at, "Parameter split")
    assert set(split["data"][0]["labels"]) == {"attention", "MLP", "embeddings", "norms and other"}
    first, sentence = picture_first(at)  # the model in one picture comes before its forms
    assert chart_title(first) == "Parameter split"
    parameters = dict(zip(split["data"][0]["labels"], array(split["data"][0]["values"]).tolist()))
    assert sentence == parameter_picture(parameters, [128, 128])
    assert {r.label for r in at.radio} >= {"Model source", "Calibration text", "Evaluation text"}
    assert {b.label for b in at.button} >= {"Load model", "Use this data"}
    assert str(app_files["calibration"]) in [t.value for t in at.text_input]


def test_model_and_data_page_refuses_bad_input_with_a_clear_message(app_files, tmp_path):
    at = start_app()
    open_page(at, "model_data")
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


def test_run_page_has_every_declared_hyperparameter_with_its_default(app_files):
    from spap_core.pipeline.parameters import method_parameters
    from spap_service.presets import CPU_RUN, interactive_settings

    at = start_app()
    open_page(at, "run_spap")
    defaults = interactive_settings(torch.device("cpu"))
    widgets = {w.key: w for kind in ("slider", "number_input", "selectbox", "checkbox")
               for w in at.get(kind) if w.key}
    for declared in method_parameters("spap"):
        expected = (declared.read(defaults) if declared.path else
                    {"nsamples": CPU_RUN.nsamples, "seqlen": CPU_RUN.seqlen, "seed": 0}[declared.key])
        assert declared.key in widgets, f"no widget for {declared.key}"
        assert widgets[declared.key].value == pytest.approx(expected) if isinstance(expected, float) else \
            widgets[declared.key].value == expected, declared.key
    assert widgets["am_rounds"].value == 0 < PruneSettings().options.altmin.rounds  # off in the CPU preset only
    captions = {c.value for c in at.caption}
    assert all(declared.help in captions for declared in method_parameters("spap"))  # each explained where it is set
    assert not {w.key for kind in ("slider", "number_input", "selectbox", "checkbox") for w in at.get(kind)} & {
        "obs_block", "obs_damping", "obs_bias", "flap_bias"}  # other methods' settings are on the sweep page


def test_run_completes_and_shows_results_downloads_and_share_link(ran_app):
    at = ran_app
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Perplexity, dense"]) > 0 and float(metrics["Perplexity, pruned"]) > 0
    assert "M" in metrics["Parameters"]
    assert {b.label for b in at.get("download_button")} == {
        "Pruned model (.zip)", "Metrics (.json)", "ρ trace (.csv)", "Layers (.csv)", "Saved runs (.csv)"}
    assert "sparsity=0.25" in at.code[0].value and f"K={RUN_ITERATIONS}" in at.code[0].value
    history = next(frame.value for frame in at.dataframe if "prune s" in frame.value.columns)  # this session's runs
    assert len(history) == 1 and history["sparsity"].iloc[0] == 0.25
    assert history["ppl pruned, 95% interval"].iloc[0] == interval_words(at.session_state["latest_run"].record[
        "window_nll"])
    per_layer = titled(at, "Relative reconstruction error per layer")
    assert per_layer["data"][0]["type"] == "bar"
    outcome = at.session_state["latest_run"]
    # the headline is the mean of the bars drawn beside it, and says so
    headline = next(m for m in at.metric if m.label == "Mean layer error")
    assert float(headline.value) == pytest.approx(np.mean(array(per_layer["data"][0]["y"])), abs=1e-4)
    assert "Mean over layers" in headline.help
    assert outcome.result.params_after < outcome.result.params_before
    assert len(outcome.result.trace) == 2 * RUN_ITERATIONS


def test_pruned_model_download_is_a_loadable_zip(ran_app, tmp_path):
    import zipfile

    from spap_core.models.loading import load_model
    from spap_service.runs import pruned_model_zip

    archive = tmp_path / "pruned.zip"
    archive.write_bytes(pruned_model_zip(ran_app.session_state["latest_run"]))
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(tmp_path)
    reloaded = load_model(str(tmp_path / "pruned-model"), device="cpu")
    assert reloaded.model.config.intermediate_size == 96


def test_mask_evolution_page_plots_the_soft_mask_per_iteration(ran_app):
    at = ran_app
    open_page(at, "mask_evolution")
    outcome = at.session_state["latest_run"]
    heatmap = titled(at, "Layer 0: s over ρ iterations")
    z = array(heatmap["data"][0]["z"])
    assert z.shape == (RUN_ITERATIONS + 1, 128)  # every ρ iteration, then the binary read-out
    assert list(heatmap["data"][0]["y"])[-1] == "read-out"
    assert set(np.unique(z[-1])) == {0.0, 1.0} and z[-1].sum() == 128 - len(outcome.result.layers[0].keep)
    first, sentence = picture_first(at)  # the heatmap opens the page, with its sentence under it
    assert chart_title(first).startswith("Layer 0: s over ρ iterations")
    assert sentence == mask_picture(z, 0, 128, 128 - len(outcome.result.layers[0].keep))
    assert f"removed: {int(z[-1].sum())} channels" in sentence
    maths = " ".join(element.value for kind, expander, element in outline(at)
                     if expander == "The maths" and kind == "caption")
    assert "s⁽⁰⁾" in maths and "h̄" in maths  # the notation, below the picture
    assert len(titled(at, "Layer 0: s per channel")["frames"]) == RUN_ITERATIONS + 1
    animated = titled(at, "All layers")
    assert len(animated["frames"]) == RUN_ITERATIONS + 1
    labels = [step["label"] for step in animated["layout"]["sliders"][0]["steps"]]
    assert labels[:2] == ["1", "2"] and labels[-1] == "read-out"
    norms = titled(at, "Layer 0: column norms of W (the output projection) as ρ grows")
    assert norms["layout"]["xaxis"]["type"] == "log"
    rhos = [step.rho for step in outcome.result.trace if step.layer == 0]
    assert all(np.allclose(array(trace["x"]), rhos) for trace in norms["data"] if trace.get("mode") != "lines")
    titled(at, "Distance of s from its read-out")
    masks, readouts = soft_masks(outcome.result), readout_masks(outcome.result)
    if changed_mind_counts(masks, readouts).sum():
        titled(at, "Channels marked at some iteration")
    else:  # no chart of zeros: the page says so in words
        assert any(info.value.startswith("None, in any layer") for info in at.info)
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
    from pages._palette import method_style

    traces = titled(at, "Layer 0")["data"]  # the ECDF, in the palette's colours (plotly draws a line in its marker's)
    lines = {trace["name"]: trace["line"] for trace in traces}
    assert {trace["name"]: trace["marker"]["color"] for trace in traces} == {
        "magnitude": method_style("magnitude").colour, "wanda-sp": method_style("wanda-sp").colour,
        "flap": method_style("flap").colour, "spap_first": method_style("spap").colour,
        "spap_last": method_style("spap").colour}
    assert lines["spap_first"]["dash"] == "dot" and lines["spap_last"]["dash"] == "solid"
    jaccard = titled(at, "Jaccard overlap")
    overlap = array(jaccard["data"][0]["z"])
    assert overlap.shape == (6, 6) and np.allclose(np.diag(overlap), 1.0)
    at.radio(key="scores_scope").set_value("all layers (mean)").run()
    assert_clean(at)


def overlap_caption_and_matrix(at: AppTest) -> tuple[str, float, float]:
    """The overlap caption and the two numbers it quotes, read from the heatmap beside it."""
    heatmap = titled(at, "Jaccard overlap")
    z, rows, columns = array(heatmap["data"][0]["z"]), list(heatmap["data"][0]["y"]), list(heatmap["data"][0]["x"])
    caption = next(m.value for m in at.markdown if "the channels SPAP removed overlap" in m.value)
    column = columns.index(SPAP_PRUNED)
    return caption, z[rows.index("spap_first"), column], z[rows.index("spap_last"), column]


def test_scores_opens_with_its_chart_and_every_caption_quotes_the_layer_or_mean_it_shows(ran_app):
    at = ran_app
    open_page(at, "scores")
    at.radio(key="scores_chart").set_value("Histogram").run()
    at.radio(key="scores_scope").set_value("this layer").run()
    record = at.session_state["latest_run"].result.layers[0]
    first, sentence = picture_first(at)
    assert chart_title(first).startswith("Layer 0: 128 channels")
    assert sentence == scores_picture(record, "left of") and "layer 0" in sentence
    at.radio(key="scores_chart").set_value("Violin").run()
    assert picture_first(at)[1] == scores_picture(record, "below")  # the cut's side follows the chart drawn
    caption, first_overlap, last_overlap = overlap_caption_and_matrix(at)
    assert caption.startswith("In layer 0,") and titled(at, "Jaccard overlap")["layout"]["meta"]["title"].endswith(
        "layer 0")
    assert f"first ranking scored lowest by {first_overlap:.2f}" in caption
    assert f"last ranking scored lowest by {last_overlap:.2f}" in caption
    at.radio(key="scores_scope").set_value("all layers (mean)").run()
    caption, first_overlap, last_overlap = overlap_caption_and_matrix(at)
    assert caption.startswith("In the mean over 2 layers,")
    assert f"first ranking scored lowest by {first_overlap:.2f}" in caption
    assert f"last ranking scored lowest by {last_overlap:.2f}" in caption
    at.slider(key="scores_layer").set_value(1).run()
    at.radio(key="scores_scope").set_value("this layer").run()
    assert overlap_caption_and_matrix(at)[0].startswith("In layer 1,")
    maths = [element for kind, expander, element in outline(at) if expander == "The maths"]
    assert any("‖W[:,i]‖·‖Zᵢ‖ᵗ" in getattr(element, "value", "") for element in maths if element.type == "caption")


def test_latency_page_measures_dense_and_pruned(ran_app):
    at = ran_app
    open_page(at, "latency")
    at.number_input(key="latency_prefill_tokens").set_value(16)
    at.number_input(key="latency_decode_tokens").set_value(2)
    at.number_input(key="latency_repeats").set_value(2)
    at.number_input(key="latency_warmup").set_value(0)
    click(at, "Measure")
    finish_job(at, "latency")
    bars = next(f for f in figures(at) if any("error_y" in trace for trace in f["data"]))
    timed = [trace for trace in bars["data"] if "error_y" in trace]
    assert len(timed) == 4 and all(trace["error_y"]["symmetric"] is False for trace in timed)
    ratios = titled(at, "Measured speed-ups")
    names = {trace["name"] for trace in ratios["data"]}
    assert "theory" in names and names & {"measured", "measured, inconclusive"}
    verdicts = [a.value for a in [*at.success, *at.warning] if a.value.startswith(("Prefill", "Decode"))]
    assert len(verdicts) == 2  # each measured speed-up says whether it is conclusive
    comparison = at.session_state["latency"]
    memory = next(frame.value for frame in at.dataframe if "weight memory (parameters), MB" in frame.value.index)
    # the models' memory is their weights; the prefill's row says it measures RAM growth, not the models
    assert list(memory.index[:2]) == ["weight memory (parameters), MB", "RAM growth during one prefill, MB"]
    assert memory.loc["weight memory (parameters), MB"].tolist() == [f"{comparison.dense.weight_mb:.4g}",
                                                                     f"{comparison.pruned.weight_mb:.4g}"]
    explained = next(c.value for c in at.caption if c.value.startswith("weight memory (parameters), MB:"))
    assert f"dense ÷ pruned: {comparison.dense.weight_mb / comparison.pruned.weight_mb:.2f}" in explained
    assert "RAM growth during one prefill: how much the process's resident memory grew" in explained


def run_sweep(at: AppTest, methods: list[str], sparsities: tuple[float, float], step: float) -> None:
    """Run a sweep from the Perplexity vs sparsity page and wait for its table."""
    open_page(at, "perplexity_sweep")
    at.multiselect(key="sweep_methods").set_value(methods)
    at.slider(key="sweep_range").set_value(sparsities)
    at.selectbox(key="sweep_step").set_value(step)
    click(at, "Run sweep")
    finish_job(at, "sweep")


def test_sweep_runs_as_a_job_and_is_cached(ran_app):
    at = ran_app
    run_sweep(at, ["spap", "magnitude"], (0.2, 0.4), 0.2)
    chart = titled(at, "Perplexity vs sparsity")
    methods = [trace for trace in chart["data"] if not trace["name"].startswith("dense")]
    assert {trace["name"] for trace in methods} == {"spap", "magnitude"}
    assert all(len(array(trace["x"])) == 2 for trace in methods)
    assert any(trace["name"].startswith("dense") for trace in chart["data"])
    assert "evaluation: 8 windows × " in chart_title(chart)  # what the perplexities were measured on
    assert all(trace["line"]["color"] == method_style(trace["name"]).colour for trace in methods)
    assert {axis.get("tickformat") for name, axis in chart["layout"].items() if name.startswith("xaxis")} == {".0%"}
    from spap_service.comparisons import RESULT_TABLES, compare_points, readable

    table = RESULT_TABLES.get(at.session_state["table_requests"]["sweep"].key)
    at_40 = table[table["sparsity"] == 0.4].sort_values("perplexity")
    reading = next(shown(m.value) for m in at.markdown if shown(m.value).startswith("At 40% sparsity"))
    best = at_40["method"].iloc[0]
    if compare_points(at_40.iloc[0], at_40.iloc[1], seeds_pair=True).distinguishable:  # the sentence follows it
        assert reading.startswith(f"At 40% sparsity, {best} has the lowest perplexity, "
                                  f"{readable(at_40['perplexity'].iloc[0])}: ")
    else:
        assert reading.startswith(f"At 40% sparsity, {best}'s perplexity, {readable(at_40['perplexity'].iloc[0])}, "
                                  "is not distinguishable from ")
    first_job = session_job(at, "sweep")
    open_page(at, "scores")
    open_page(at, "perplexity_sweep")  # revisiting shows the cached sweep at once
    titled(at, "Perplexity vs sparsity")
    at.multiselect(key="sweep_methods").set_value(["spap", "magnitude"])
    at.slider(key="sweep_range").set_value((0.2, 0.4))
    at.selectbox(key="sweep_step").set_value(0.2)
    click(at, "Run sweep")
    assert session_job(at, "sweep") is first_job  # served from the cache, no new job
    assert "weight update: own" in chart_title(titled(at, "Perplexity vs sparsity"))


def test_a_sweep_with_spaps_refit_and_a_global_allocation_says_so(ran_app):
    """The global allocation's own settings are widgets with their declared range and default once
    it is chosen (none before), and a value set there reaches the runs and their table."""
    from spap_core.pipeline.parameters import BY_KEY

    at = ran_app
    open_page(at, "perplexity_sweep")
    assert "max_deviation" not in {widget.key for widget in at.number_input}
    at.multiselect(key="sweep_methods").set_value(["magnitude"])
    at.slider(key="sweep_range").set_value((0.2, 0.3))
    at.selectbox(key="sweep_step").set_value(0.1)
    at.radio(key="sweep_reconstruction").set_value("refit").run()
    at.radio(key="sweep_allocation").set_value("global").run()
    for key, default in (("max_deviation", 0.1), ("outlier_factor", 5.0)):
        widget = at.number_input(key=key)
        assert (widget.min, widget.max, widget.value) == (BY_KEY[key].low, BY_KEY[key].high, default), key
    at.number_input(key="max_deviation").set_value(0.05)
    click(at, "Run sweep")
    finish_job(at, "sweep")
    chart = titled(at, "Perplexity vs sparsity")
    assert "weight update: refit; global allocation" in chart_title(chart)
    refitted = [trace for trace in chart["data"] if trace["name"] == "magnitude"][0]
    assert len(array(refitted["x"])) == 2
    from spap_service.comparisons import RESULT_TABLES

    table = RESULT_TABLES.get(at.session_state["table_requests"]["sweep"].key)
    assert all("global allocation, max deviation = 0.05" in settings for settings in table["settings"])


def run_two_point_scan(at: AppTest, parameter: str) -> None:
    """A finished scan of `parameter` over two values, from the Sensitivity page."""
    open_page(at, "sensitivity")
    at.selectbox(key="scan_parameter").set_value(parameter).run()
    at.slider(key="scan_points").set_value(2)
    click(at, "Run scan")
    finish_job(at, "scan")


def test_sensitivity_scan_plots_error_and_perplexity(ran_app):
    at = ran_app
    run_two_point_scan(at, "alpha")
    chart, sentence = picture_first(at)  # the scan's chart comes first, above the form for the next one
    # two values chosen, and the fixed settings' α, which every value is compared with, unless it is one of them
    points = len(at.dataframe[0].value)
    assert points in (2, 3) and len(chart["data"]) == 2 and all(len(array(t["x"])) == points for t in chart["data"])
    values = array(chart["data"][0]["x"])
    assert sentence.startswith(f"Each point is one whole pruning run with \"{BY_KEY['alpha'].label}\" set to the "
                               f"value under it: from "
                               f"{values.min():g} to {values.max():g}")
    assert {chart["layout"][axis].get("tickformat") for axis in ("xaxis", "xaxis2")} == {None}  # α is no share


def test_a_scan_of_the_sparsity_reads_it_in_percent_on_both_panels(ran_app):
    at = ran_app
    run_two_point_scan(at, "sparsity")
    chart = titled(at, "Scan of")
    assert {chart["layout"][axis].get("tickformat") for axis in ("xaxis", "xaxis2")} == {".0%"}


def test_sensitivity_refuses_an_invalid_range(ran_app):
    at = ran_app
    open_page(at, "sensitivity")
    at.selectbox(key="scan_parameter").set_value("tau").run()
    low, high = at.number_input(key="scan_low_tau"), at.number_input(key="scan_high_tau")
    assert (low.min, low.max) == (high.min, high.max) == (BY_KEY["tau"].low, BY_KEY["tau"].high)  # τ > 1 only
    low.set_value(5.0)
    high.set_value(2.0)
    click(at, "Run scan")
    assert not at.exception
    assert any("'From' must be below 'To'" in e.value for e in at.error)


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
                                    label="another session's job", estimate_s=600.0)
    try:
        at = start_app()
        # AppTest keeps the router's sidebar only on the default page, so the queue is checked here
        assert any(c.value.startswith(":material/play_arrow: another session's job (another session)")
                   for c in at.sidebar.caption)
        open_page(at, "run_spap")
        click(at, "Run SPAP")
        # the wait: what the running job has left of its 10-minute estimate
        assert any("Queued, 1 ahead (sessions take turns), starts in about 10 min" in info.value for info in at.info)
        at.button(key=f"cancel-{session_job(at, 'run').id}").click().run()
        assert session_job(at, "run").status is JobStatus.CANCELLED
        assert any("cancelled" in w.value for w in at.warning)
    finally:
        release.set()
        shared_queue().wait(blocker, JOB_HANG_GUARD_S)

    # A running run: it waits at its first ρ iteration until the Cancel click has been made, so
    # the click always lands while it runs, and the run must end cancelled, not done.
    import spap_core.methods.spap as spap_module

    clicked, original = threading.Event(), spap_module.spap_layer

    def held_at_first_layer(*args, **kwargs):
        assert clicked.wait(JOB_HANG_GUARD_S)
        return original(*args, **kwargs)

    spap_module_patch = pytest.MonkeyPatch()
    spap_module_patch.setattr(spap_module, "spap_layer", held_at_first_layer)
    try:
        click(at, "Run SPAP")
        job = session_job(at, "run")
        at.button(key=f"cancel-{job.id}").click().run()
        clicked.set()
        assert shared_queue().wait(job, JOB_HANG_GUARD_S)
    finally:
        spap_module_patch.undo()
    at.run()
    assert job.status is JobStatus.CANCELLED, job.status
    assert any("cancelled" in w.value for w in at.warning)
    assert not at.exception


def test_a_window_longer_than_the_model_is_refused_before_a_job_is_queued(app_files):
    at = start_app()
    open_page(at, "run_spap")
    at.number_input(key="seqlen").set_value(4096)
    click(at, "Run SPAP")
    assert not at.exception
    assert any("longer than the model's 256 positions" in shown(e.value) for e in at.error)
    assert "run" not in at.session_state["jobs"]  # nothing was queued


def test_failed_run_shows_the_library_message(app_files):
    at = start_app()
    open_page(at, "run_spap")
    at.number_input(key="nsamples").set_value(1024)
    at.number_input(key="seqlen").set_value(256)  # more windows than the text holds: found when it is read
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
    from pages._model import _load_model_shared

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
    assert not [box for box in at.selectbox if box.key == "saved_run"]  # another session's runs are not listed
    assert any("None yet" in c.value for c in at.caption)
    at.toggle(key="saved_runs_everyone").set_value(True).run()
    choice = at.selectbox(key="saved_run")
    assert choice.value is None  # nothing preselected
    choice.set_value(outcome.saved_to.name).run()
    click(at, "Load this run")
    assert_clean(at)
    loaded = at.session_state["latest_run"]
    assert loaded.saved_to == outcome.saved_to
    assert loaded.has_model  # its kept weights came back from the loaded model for the download
    assert loaded.record["ppl"] == outcome.record["ppl"]
    assert any(m.label == "Perplexity, pruned" and m.value == f"{outcome.record['ppl']:.2f}" for m in at.metric)
    for page in ("mask_evolution", "scores"):
        open_page(at, page)
        assert figures(at)
    open_page(at, "latency")
    assert titled(at, "A prefill's FLOPs per token")  # drawn for the dense and the pruned model
    assert [info.value for info in at.info] == ["Press Measure: both models are timed on the job queue, one after "
                                                "the other."]


def test_out_of_memory_during_a_run_ends_it_with_advice_and_the_app_keeps_serving(app_files, monkeypatch):
    from spap_core.problem.statistics import GramAccumulator
    from spap_service.jobs import OUT_OF_MEMORY_MESSAGE

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
    assert any(OUT_OF_MEMORY_MESSAGE in shown(e.value) for e in at.error)
    click(at, "Run SPAP")  # with the memory back, the same session runs again
    finish_job(at, "run")
    assert at.session_state["latest_run"].pruned.perplexity > 0


def test_a_results_link_opens_a_saved_run_and_a_bogus_one_is_named(ran_app):
    outcome = ran_app.session_state["latest_run"]
    open_page(ran_app, "run_spap")
    link = next(code.value for code in ran_app.code if "?run=" in code.value)
    assert link.endswith(f"?run={outcome.saved_to.name}")
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    at.query_params["run"] = outcome.saved_to.name
    at.run()
    assert_clean(at)
    opened = at.session_state["latest_run"]
    assert opened.saved_to == outcome.saved_to and opened.record["ppl"] == outcome.record["ppl"]
    bogus = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    bogus.query_params["run"] = "../../etc"
    bogus.run()
    assert not bogus.exception
    assert any("does not have" in w.value for w in bogus.warning)
    assert "latest_run" not in bogus.session_state


def link_session(name: str) -> AppTest:
    """A fresh browser session opened by a results link."""
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    at.query_params["run"] = name
    at.run()
    assert_clean(at)
    return at


def test_a_results_link_brings_the_pruned_weights_for_text_and_latency(ran_app):
    outcome = ran_app.session_state["latest_run"]
    at = link_session(outcome.saved_to.name)
    assert not at.session_state["latest_run"].has_model  # opened from disk: the weights come when a page needs them
    open_page(at, "dense_vs_pruned")
    dense, pruned = generate_greedily(at, new_tokens=4)
    assert dense.split() and pruned.split()
    with torch.no_grad():  # rebuilt from the loaded dense model: the logits of the model the run pruned
        ids = torch.tensor([[1, 5, 9, 12]])
        assert torch.equal(at.session_state["latest_run"].pruned_model()(input_ids=ids).logits,
                           outcome.pruned_model()(input_ids=ids).logits)
    open_page(at, "latency")
    assert not at.info or all("saved without" not in info.value for info in at.info)
    flops = titled(at, "A prefill's FLOPs per token")
    assert {trace["xaxis"] for trace in flops["data"]} == {"x", "x2"}  # a panel for the dense and the pruned model
    open_page(at, "run_spap")
    assert "Pruned model (.zip)" in [button.label for button in at.get("download_button")]


def test_a_run_saved_without_its_weights_says_so_on_the_pages_that_need_them(ran_app, tmp_path):
    saved = ran_app.session_state["latest_run"].saved_to
    older = saved.with_name(saved.name[:-1] + ("0" if saved.name[-1] != "0" else "1"))
    shutil.copytree(saved, older, ignore=shutil.ignore_patterns(WEIGHTS_FILE))
    try:
        record = json.loads((older / "results.json").read_text())
        del record["pruned_weights"]  # as runs were saved before they kept their weights
        (older / "results.json").write_text(json.dumps(record))
        at = link_session(older.name)
        for page, purpose in (("dense_vs_pruned", "to let the pruned model write"),
                              ("latency", "to time the pruned model")):
            open_page(at, page)
            assert [shown(info.value) for info in at.info] == [
                "This run was saved without its pruned weights (it was saved before saved runs kept their weights); "
                f"run it again on Run SPAP {purpose}."]
        open_page(at, "run_spap")
        assert "Pruned model (.zip)" not in [button.label for button in at.get("download_button")]
        assert any(shown(caption.value).startswith("This run was saved without its pruned weights")
                   and shown(caption.value).endswith("run it again on Run SPAP to download them.")
                   for caption in at.caption)
    finally:
        shutil.rmtree(older)


def test_fixed_settings_captions_never_name_what_varies(ran_app):
    at = ran_app
    open_page(at, "perplexity_sweep")
    fixed = next(c.value for c in at.caption if c.value.startswith("Fixed for every point"))
    listed = fixed.split(":", 1)[1].split("(this page's")[0]
    assert not re.search(r"(?<!head )sparsity", listed) and "head sparsity 0%" in listed and "K = " in fixed
    assert any("runs (methods × sparsities): about" in c.value and "Its points run one after another in this process."
               in c.value for c in at.caption)  # a time estimate, and where the points run
    open_page(at, "sensitivity")
    for parameter, absent in (("rho0", r"ρ⁽⁰⁾ ="), ("sparsity", r"(?<!head )sparsity "), ("tau", r"τ =")):
        at.selectbox(key="scan_parameter").set_value(parameter).run()
        fixed = next(c.value for c in at.caption if c.value.startswith("Fixed for every value"))
        assert not re.search(absent, fixed), (parameter, fixed)
        assert "α = " in fixed


def test_a_link_with_settings_the_form_cannot_take_says_which_were_ignored_and_why(app_files):
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    at.query_params.update({"sparsity": "5", "K": "-3", "score": "bogus", "foo": "1", "tau": "2.5"})
    at.switch_page("pages/run_spap.py")
    at.run()
    assert not at.exception
    warning = shown(next(w.value for w in at.warning if "partly ignored" in w.value))
    assert "sparsity = 5:" in warning and "K = -3:" in warning and "score = bogus:" in warning and "foo:" in warning
    assert "tau" not in warning  # a valid one is taken
    assert at.slider(key="tau").value == 2.5 and at.slider(key="K").value == PenaltySettings().iterations


def test_every_numeric_widget_has_the_range_the_cli_and_the_share_link_enforce(ran_app):
    """One declaration, three consumers: the Run form, Model & data and Latency pages draw their
    number widgets with the declared range (the CLI's bounds: tests/spap_core/test_cli_robustness.py), and a
    link with a value past it is named as ignored."""
    from spap_core.pipeline.parameters import BY_KEY, DATA_PARAMETERS, LATENCY_PARAMETERS, method_parameters

    def ranges(at):
        return {w.key: (w.min, w.max) for kind in ("slider", "number_input") for w in at.get(kind) if w.key}

    at = ran_app
    open_page(at, "run_spap")
    drawn = ranges(at)
    for declared in method_parameters("spap"):
        if declared.kind in (int, float):
            assert drawn[declared.key] == pytest.approx((declared.low, declared.high)), declared.key
    open_page(at, "model_data")
    drawn = ranges(at)
    for declared in (BY_KEY["nsamples"], BY_KEY["seqlen"], *DATA_PARAMETERS):
        assert drawn[f"data_{declared.key}"] == (declared.low, declared.high), declared.key
    open_page(at, "latency")
    drawn = ranges(at)
    for declared in LATENCY_PARAMETERS:
        assert drawn[f"latency_{declared.key}"] == (declared.low, declared.high), declared.key

    linked = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    linked.query_params["K"] = "10000"
    linked.switch_page("pages/run_spap.py").run()
    assert not linked.exception
    assert any("K = 10000: K must be between 1 and 60" in shown(w.value) for w in linked.warning)


def test_a_saved_run_that_cannot_be_read_is_skipped_with_its_reason_and_the_others_stay_listed(ran_app):
    outcome = ran_app.session_state["latest_run"]
    corrupt = outcome.saved_to.parent / "20200101-000000-spap-0.30-broken"
    corrupt.mkdir()
    (corrupt / "results.json").write_text('{"method": "spap", "ppl": NaN')
    try:
        open_page(ran_app, "run_spap")
        assert_clean(ran_app)
        assert any(f"Skipped the saved run {corrupt.name}, which cannot be read: results.json:" in shown(c.value)
                   and str(corrupt.parent) not in c.value for c in ran_app.caption)
        assert ran_app.selectbox(key="saved_run").options == [  # the readable run is still listed
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(outcome.record['finished_at']))} · spap at "
            f"{outcome.record['sparsity']:.0%} · ppl {outcome.record['ppl']:.2f} "
            f"{interval_words(outcome.record['window_nll'])}"]
    finally:
        import shutil
        shutil.rmtree(corrupt)


def test_a_baselines_own_settings_are_widgets_on_the_sweep_page_and_reach_its_runs(ran_app):
    """OBS's block and damping and FLAP's bias come from their declarations, like SPAP's on Run
    SPAP: a widget each with the declared range and default, their values run and are in the table."""
    from spap_core.pipeline.parameters import BY_KEY

    at = ran_app
    open_page(at, "perplexity_sweep")
    at.multiselect(key="sweep_methods").set_value(["obs", "flap"]).run()
    block, damping = at.number_input(key="obs_block"), at.number_input(key="obs_damping")
    assert (block.min, block.max, block.value) == (BY_KEY["obs_block"].low, BY_KEY["obs_block"].high, 1)
    assert (damping.min, damping.max) == (BY_KEY["obs_damping"].low, BY_KEY["obs_damping"].high)
    assert at.checkbox(key="flap_bias").value is True and at.checkbox(key="obs_bias").value is True
    block.set_value(8)
    at.checkbox(key="flap_bias").set_value(False)
    at.slider(key="sweep_range").set_value((0.3, 0.3))
    click(at, "Run sweep")
    finish_job(at, "sweep")
    from spap_service.comparisons import RESULT_TABLES

    table = RESULT_TABLES.get(at.session_state["table_requests"]["sweep"].key)
    settings = dict(zip(table["method"], table["settings"]))  # exported with the CSV
    assert "OBS block = 8" in settings["obs"] and "γ = 0.01" in settings["obs"]
    assert "FLAP bias false" in settings["flap"] and "OBS" not in settings["flap"]


def test_every_result_names_the_run_that_made_it(ran_app):
    """The latest result, each chart of it and its downloads name the method, the sparsity and the
    settings that differ from the defaults (here K)."""
    at = ran_app
    open_page(at, "run_spap")
    label = f"spap at 25% · K = {RUN_ITERATIONS}"
    assert any(header.value.startswith(f"Latest result: {label}") for header in at.subheader)
    for page in ("run_spap", "mask_evolution", "scores"):
        open_page(at, page)
        titles = [chart_title(figure) for figure in figures(at)]
        assert titles and all(label in title for title in titles), (page, titles)
    outcome = at.session_state["latest_run"]
    assert outcome.file_stem == f"spap-run-{outcome.saved_to.name}"


def test_a_results_link_fills_the_form_with_the_runs_settings(ran_app):
    outcome = ran_app.session_state["latest_run"]
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    at.query_params["run"] = outcome.saved_to.name
    at.switch_page("pages/run_spap.py").run()
    assert_clean(at)
    assert at.slider(key="sparsity").value == pytest.approx(0.25) and at.slider(key="K").value == RUN_ITERATIONS
    assert not at.warning or all("created with a default value" not in w.value for w in at.warning)
    from pages._requests import form_values

    assert_form_shows(at, form_values(outcome.request))  # every field, the calibration size included
    open_page(at, "scores")
    at.query_params.clear()  # as in a browser, where the link of another page has none of the form's values
    open_page(at, "run_spap")  # shown again: still the run it shows
    assert_form_shows(at, form_values(outcome.request))


def test_every_form_ignores_enter(app_files):
    """Enter in a number box of a form would submit it and start a job: every form turns that off."""
    import ast

    for path in sorted((APP.parent / "pages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "form":
                keywords = {k.arg: k.value for k in node.keywords}
                assert "enter_to_submit" in keywords and keywords["enter_to_submit"].value is False, path.name


def test_the_sweep_form_comes_back_with_the_sweep_it_shows(ran_app):
    at = ran_app
    run_sweep(at, ["spap", "magnitude"], (0.2, 0.4), 0.2)
    open_page(at, "scores")
    open_page(at, "perplexity_sweep")  # Streamlit forgot the widgets; the form is the chart's again
    assert at.multiselect(key="sweep_methods").value == ["spap", "magnitude"]
    assert tuple(at.slider(key="sweep_range").value) == pytest.approx((0.2, 0.4))
    chart = titled(at, "Perplexity vs sparsity")
    assert {trace["name"] for trace in chart["data"] if not trace["name"].startswith("dense")} == {"spap", "magnitude"}
    assert not any("other choices than the ones below" in c.value for c in at.caption)
    at.multiselect(key="sweep_methods").set_value(["spap"]).run()
    assert any("other choices than the ones below" in c.value for c in at.caption)  # said, not hidden


def test_the_scan_form_says_how_many_values_its_chart_shows(ran_app):
    at = ran_app
    open_page(at, "sensitivity")
    at.selectbox(key="scan_parameter").set_value("K").run()
    at.number_input(key="scan_low_K").set_value(2)
    at.number_input(key="scan_high_K").set_value(4)
    at.slider(key="scan_points").set_value(4)  # only 3 whole values lie in 2–4
    click(at, "Run scan")
    finish_job(at, "scan")
    open_page(at, "scores")
    open_page(at, "sensitivity")
    chart = titled(at, "Scan of")
    shown = len(array(chart["data"][0]["x"]))  # the run's K = 6 is added: every value is compared with it
    assert shown == 4 and any(c.value.startswith(f"{shown - 1} values, spaced evenly: 2, 3, 4, and 6, the value in "
                                                 "the fixed settings, added") for c in at.caption)
    assert at.number_input(key="scan_low_K").value == 2 and at.slider(key="scan_points").value == 4


def test_compare_runs_puts_two_runs_side_by_side_with_their_differences_marked(app_files):
    """Two runs of one browser that differ in sparsity and K: the page lists both, opens with their
    per-layer errors and one sentence read from them, shows their metrics, marks exactly the settings
    that differ, and draws the agreement of their pruned channels and a perplexity point per run."""
    at = run_spap(0.25, 3)
    at.slider(key="sparsity").set_value(0.5)
    at.slider(key="K").set_value(4)
    click(at, "Run SPAP")
    finish_job(at, "run")
    open_page(at, "compare_runs")
    assert at.multiselect(key="compare_runs").value and len(at.multiselect(key="compare_runs").value) == 2
    first, sentence = picture_first(at)  # the per-layer errors open the page, read in one sentence
    assert chart_title(first) == "Relative reconstruction error per layer: MLP channels"
    from spap_service.compare import error_reading

    drawn = pd.DataFrame([{"run": trace["name"], "layer": layer, "relative_error": error} for trace in first["data"]
                          for layer, error in zip(array(trace["x"]), array(trace["y"]))])
    assert shown(sentence) == error_reading(drawn) and "has the lowest mean" in sentence
    perplexities, metrics, settings = (frame.value for frame in at.dataframe[:3])
    assert list(perplexities.columns) == ["run", "perplexity", "before recovery", "ratio to run A", "verdict"]
    assert perplexities["before recovery"].tolist() == ["–", "–"]  # neither run recovered
    assert list(metrics.index)[0] == "perplexity, pruned"  # what a comparison is about comes first
    assert any("differ in 2 of" in c.value for c in at.caption)
    assert set(settings.index[:2]) == {"sparsity", "K"}  # the differing settings are listed first
    titles = [chart_title(figure) for figure in figures(at)]
    assert "Relative reconstruction error per layer: MLP channels" in titles
    assert "Agreement of the pruned channels per layer" in titles
    assert "compare_part" not in [r.key for r in at.radio]  # no run pruned heads: nothing to choose
    channel_map = titled(at, next(name for name in (chart_title(f) for f in figures(at)) if name.startswith("A ")))
    width = len(array(channel_map["data"][0]["x"]))  # the tiny model's MLP: every channel, numbered as they are
    assert list(array(channel_map["data"][0]["x"])) == list(range(width))
    assert channel_map["layout"]["xaxis"]["title"]["text"] == "channel"
    agreement = titled(at, "Agreement of the pruned channels per layer")
    jaccard, ceiling = (array(trace["y"]) for trace in agreement["data"])
    assert agreement["data"][1]["name"] == "ceiling A–B" and agreement["data"][1]["line"]["dash"] == "dot"
    assert np.all(jaccard <= ceiling + 1e-12) and np.all(ceiling < 1)  # 25% of the channels against 50%
    assert not any(chart_title(figure).startswith("Runs that agree") for figure in figures(at))  # no lone dots
    assert any(shown(info.value).startswith("No curve through run A (spap, K = 4, 50%), run B (spap, K = 3, 25%): ")
               for info in at.info)  # K differs too: each run is alone at its settings


def test_compare_runs_draws_a_curve_through_runs_that_differ_only_in_their_sparsity(app_files):
    at = run_spap(0.25, 3)
    at.slider(key="sparsity").set_value(0.5)
    click(at, "Run SPAP")
    finish_job(at, "run")
    open_page(at, "compare_runs")
    curve = titled(at, "Runs that agree in every setting but the sparsity form one curve")
    assert [trace["name"] for trace in curve["data"]] == ["spap"]  # one curve, named by what it holds
    assert list(array(curve["data"][0]["x"])) == [0.25, 0.5] and curve["layout"]["xaxis"]["tickformat"] == ".0%"
    assert curve["data"][0]["line"]["color"] == method_style("spap").colour
    assert curve["data"][0]["marker"]["symbol"] == method_style("spap").marker
    assert not any(info.value.startswith("No curve") for info in at.info)


def element_kinds(block) -> list[str]:
    """The kinds of a page's elements in the order they are shown ('title', 'plotly_chart', …)."""
    kinds = []
    for child in block.children.values():
        kinds.append(child.type)
        if hasattr(child, "children"):
            kinds.extend(element_kinds(child))
    return kinds


def test_the_sweep_page_shows_the_precomputed_reference_curves_of_the_model_labelled_as_such(app_files,
                                                                                             monkeypatch):
    import spap_service.compare as compare

    committed = compare.reference_curves("smollm2")
    assert committed is not None and compare.reference_curves(str(app_files["model"])) is None  # that model's only
    # the committed table holds every registered method
    drawn = set(committed.table["method"])
    assert drawn == set(METHODS) and "32 × 512" in committed.protocol
    monkeypatch.setattr(compare, "reference_curves", lambda source: committed)  # as if the app ran SmolLM2
    at = start_app()
    open_page(at, "perplexity_sweep")
    chart = figures(at)[0]
    assert chart_title(chart).startswith("Reference curves (precomputed, not this session's data)")
    kinds = element_kinds(at.main)
    assert kinds.index("plotly_chart") < kinds.index("multiselect")  # the page opens with its picture, then the form
    methods = {trace["name"] for trace in chart["data"] if not trace["name"].startswith("dense")}
    assert methods == drawn - {"magnitude"}  # its 10⁴–10⁷ would squeeze the others into one band
    corner = [a["text"] for a in chart["layout"]["annotations"] if a["text"].startswith("off the axis")]
    wikitext = committed.table[(committed.table["method"] == "magnitude") & (committed.table["text"] == "wikitext2")]
    assert len(corner) == 2 and f"magnitude ({wikitext['perplexity'].min():,.0f} to " in corner[0]
    axes = [value for name, value in chart["layout"].items() if name.startswith("xaxis")]
    assert len(axes) == 2 and {axis.get("tickformat") for axis in axes} == {".0%"}  # 10%, never 0.1, in both panels
    dense = [trace for trace in chart["data"] if trace["name"].startswith("dense")]
    assert [trace.get("showlegend", True) for trace in dense] == [True, False]  # one legend entry, in both panels
    assert dense[0]["name"] == f"dense {committed.dense['wikitext2']:.2f} on wikitext2, " \
                               f"{committed.dense['shakespeare']:.2f} on shakespeare"
    for trace in chart["data"]:
        style = DENSE if trace["name"].startswith("dense") else method_style(trace["name"])
        assert trace["line"]["color"] == style.colour and trace["line"].get("dash", "solid") == style.dash
        assert trace["name"].startswith("dense") or trace["marker"]["symbol"] == style.marker
    reading = shown(next(m.value for m in at.markdown if "has the lowest perplexity" in m.value))
    benchmark = json.loads(compare.REFERENCE_TABLE.read_text())
    stored = {row["method"]: row for row in benchmark["rows"] if row["sparsity"] == 0.5}
    spap, fasp = (stored[method]["ppl"]["wikitext2"] for method in ("spap", "fasp"))
    assert reading.startswith(f"On wikitext2, at 50% sparsity, spap has the lowest perplexity, {spap:.1f}: "
                              f"{fasp - spap:.1f} below fasp")
    assert "Off the axis, far above the others: magnitude (17,690 to " in reading
    # SPAP and FASP at 50% kept every calibration seed's window losses: the sentence carries their verdict, and
    # their points their intervals as error bars
    losses = [stored[method]["window_nll_by_seed"]["wikitext2"] for method in ("spap", "fasp")]
    verdict = seeded_comparison(*losses, benchmark["tokens_per_window"]["wikitext2"], seeds_pair=True)
    assert verdict.distinguishable == ("a difference beyond the noise" in reading)
    assert f"(their ratio, {ratio_interval(verdict.ratio, verdict.ci95)}, " in reading
    spap_trace = next(trace for trace in chart["data"] if trace["name"] == "spap")
    assert array(spap_trace["error_y"]["array"])[-1] > 0
    assert any(c.value.startswith("Protocol: precomputed by bench/quality.py") for c in at.caption)


def test_every_job_says_how_long_it_should_take_and_then_how_long_it_took(app_files):
    at = start_app()
    open_page(at, "run_spap")
    before = next(c.value for c in at.caption if c.value.startswith("This run: about "))
    assert "on this machine" in before
    click(at, "Run SPAP")
    finish_job(at, "run")
    job = session_job(at, "run")
    assert job.estimate_s is not None and job.estimate_s > 0
    assert any(c.value == f"{job.label} took {job.elapsed_s:.0f} s; estimated beforehand: "
                          f"{duration(job.estimate_s)}." for c in at.caption)
    open_page(at, "latency")
    assert any(c.value.startswith("This measurement: about ") for c in at.caption)
    open_page(at, "sensitivity")
    assert any(c.value.startswith("This scan: about ") for c in at.caption)
    open_page(at, "perplexity_sweep")
    assert any(c.value.startswith("6 runs (methods × sparsities): about ") for c in at.caption)  # 2 methods × 3


def run_form(at: AppTest) -> dict:
    """Every field of Run SPAP's form as its widget shows it, by key (the recovery's where its mode uses them)."""
    from pages._requests import RUN_FORM, shown_recovery_parameters
    from spap_core.pipeline.parameters import RECOVERY_PARAMETERS
    from spap_core.recovery.settings import RECOVERY_MODE

    keys = {declared.key for declared in RUN_FORM if declared not in RECOVERY_PARAMETERS}
    keys |= {declared.key for declared in shown_recovery_parameters(at.selectbox(key=RECOVERY_MODE).value)}
    shown = {w.key: w.value for kind in ("slider", "number_input", "selectbox", "checkbox") for w in at.get(kind)
             if w.key in keys}
    assert set(shown) == keys
    return shown


def assert_form_shows(at: AppTest, expected: dict) -> None:
    from spap_core.pipeline.parameters import RECOVERY_PARAMETERS

    shown = run_form(at)
    hidden = {declared.key for declared in RECOVERY_PARAMETERS} - shown.keys()  # settings the mode does not use
    for key, value in expected.items():
        if key in hidden:
            continue
        assert shown[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def form_defaults_on_cpu() -> dict:
    from pages._requests import CALIBRATION_SEEDS, PARAMETER_BUDGET, RUN_FORM
    from spap_core.pipeline.parameters import recovery_values, settings_values
    from spap_core.recovery.settings import RecoverySettings
    from spap_service.presets import CPU_RUN, interactive_settings

    defaults = settings_values(interactive_settings(torch.device("cpu")))
    others = {"nsamples": CPU_RUN.nsamples, "seqlen": CPU_RUN.seqlen, "seed": 0, PARAMETER_BUDGET.key: 0.0,
              CALIBRATION_SEEDS.key: 1, **recovery_values(RecoverySettings())}
    return {p.key: defaults[p.key] if p.key in defaults else others[p.key] for p in RUN_FORM}


def test_the_class_demo_preset_fills_every_field_and_says_which_it_sets(app_files):
    from spap_service.presets import CLASS_DEMO

    at = start_app()
    open_page(at, "run_spap")
    at.slider(key="K").set_value(3).run()  # a field the preset does not set goes back to its default
    click(at, "Class demo preset")
    assert_clean(at)
    assert_form_shows(at, {**form_defaults_on_cpu(), **CLASS_DEMO.values})
    assert run_form(at)["K"] == PenaltySettings().iterations
    listed = next(c.value for c in at.caption if c.value.startswith(CLASS_DEMO.why))
    assert "It sets sparsity 20%, AM rounds = 1, samples = 16, tokens per sample = 256;" in listed


def test_back_to_defaults_resets_every_field(app_files):
    at = start_app()
    open_page(at, "run_spap")
    click(at, "Class demo preset")
    at.slider(key="K").set_value(3)
    at.slider(key="param_sparsity").set_value(0.3)
    at.slider(key="head_sparsity").set_value(0.5).run()
    assert run_form(at) != form_defaults_on_cpu()
    click(at, "Back to defaults")
    assert_clean(at)
    assert_form_shows(at, form_defaults_on_cpu())


def test_after_the_preset_ran_the_form_comes_back_with_all_of_its_settings(app_files):
    """Run SPAP shown again after the preset's run (Streamlit forgot the form's widgets) shows that
    run's settings in every field, its calibration size with the rest, never a mix with defaults."""
    from spap_service.presets import CLASS_DEMO

    at = start_app()
    open_page(at, "run_spap")
    click(at, "Class demo preset")
    at.slider(key="K").set_value(3)  # and one field changed by hand
    click(at, "Run SPAP")
    finish_job(at, "run")
    open_page(at, "scores")
    at.query_params.clear()  # as in a browser, where the link of another page has none of the form's values
    open_page(at, "run_spap")
    assert_form_shows(at, {**form_defaults_on_cpu(), **CLASS_DEMO.values, "K": 3})
    open_page(at, "model_data")  # the session's calibration size stays Model & data's choice
    assert at.number_input(key="data_nsamples").value == form_defaults_on_cpu()["nsamples"]


def test_start_here_and_the_run_button_quote_one_estimate_for_the_class_demo(app_files):
    from spap_service.presets import CLASS_DEMO

    at = start_app()
    card = next(c.value for c in at.caption if c.value.startswith(f"{CLASS_DEMO.name} preset: about "))
    quoted = re.search(r"about \d+ (s|min)", card).group(0)
    open_page(at, "run_spap")
    click(at, "Class demo preset")
    assert any(c.value.startswith(f"This run: {quoted} on this machine") for c in at.caption), quoted


def test_a_run_submitted_meanwhile_leaves_the_sweeps_fixed_settings_until_the_user_takes_them(app_files):
    at = start_app()
    open_page(at, "perplexity_sweep")
    before = next(c.value for c in at.caption if c.value.startswith("Fixed for every point"))
    assert "head sparsity 0%" in before and "Take Run SPAP's settings" not in [b.label for b in at.button]
    open_page(at, "run_spap")
    at.slider(key="head_sparsity").set_value(0.5)
    at.slider(key="K").set_value(3)
    click(at, "Run SPAP")  # queued: the sweep's settings stay
    open_page(at, "perplexity_sweep")
    assert next(c.value for c in at.caption if c.value.startswith("Fixed for every point")) == before
    assert any(c.value.startswith("Run SPAP's last submitted run differs") and "head sparsity 50%" in c.value
               and "K = 3" in c.value for c in at.caption)
    open_page(at, "sensitivity")  # one copy for both pages
    assert "head sparsity 0%" in next(c.value for c in at.caption if c.value.startswith("Fixed for every value"))
    click(at, "Take Run SPAP's settings")
    assert_clean(at)
    after = next(c.value for c in at.caption if c.value.startswith("Fixed for every value"))
    assert "head sparsity 50%" in after and "K = 3" in after
    assert not any(c.value.startswith("Run SPAP's last submitted run differs") for c in at.caption)
    shared_queue().wait(session_job(at, "run"), JOB_HANG_GUARD_S)


def test_one_parameter_budget_is_split_between_channels_and_heads_and_the_result_says_how(app_files):
    at = start_app()
    open_page(at, "run_spap")
    at.slider(key="param_sparsity").set_value(0.9)  # more than the tiny model's MLPs and heads can give
    click(at, "Run SPAP")
    assert any(shown(e.value).startswith("A parameter budget of 90% cannot be met") for e in at.error)
    assert "run" not in at.session_state["jobs"]  # refused before queueing
    at.slider(key="param_sparsity").set_value(0.5)
    click(at, "Run SPAP")
    finish_job(at, "run")
    assert session_job(at, "run").label == "SPAP run at a parameter budget of 50%"  # not the unused sparsity
    outcome = at.session_state["latest_run"]
    budget, pruned = outcome.record["budget"], outcome.result.settings
    assert budget["param_sparsity"] == pytest.approx(0.5) and len(budget["summed_layer_errors"]) > 1
    split = next(i.value for i in at.info if i.value.startswith("One parameter budget"))
    assert (f"50% of the decoder layers' parameters, met by removing {pruned.sparsity:.1%} of the MLP channels and "
            f"{pruned.head_sparsity:.0%} of the heads ({budget['removed_of_layers']:.1%}") in split
    chosen = min(budget["summed_layer_errors"].values())
    assert "the smallest chosen: " in split and f"{chosen:.4g}" in split
    open_page(at, "scores")
    at.query_params.clear()
    open_page(at, "run_spap")  # the form shows the budget the run was asked
    assert at.slider(key="param_sparsity").value == pytest.approx(0.5)


def test_a_run_with_heads_shows_them_on_every_page(app_files):
    """Run SPAP with a head sparsity: the result names the layout, Mask evolution draws each head's s
    and the layer map of pruned heads, Scores the heads' scores, Latency where heads matter; every
    caption's numbers come from the run."""
    at = start_app()
    open_page(at, "run_spap")
    at.slider(key="sparsity").set_value(0.25)
    at.slider(key="head_sparsity").set_value(0.5)
    at.slider(key="K").set_value(3)
    click(at, "Run SPAP")
    assert_clean(at)
    finish_job(at, "run")
    assert any("Attention heads: 2 of 4 heads kept: 2 KV groups × 1 query head in every layer" in c.value
               for c in at.caption)
    open_page(at, "mask_evolution")
    assert_clean(at)
    story = next(c.value for c in at.caption if "Every layer keeps" in c.value)
    assert "Every layer keeps 2 of its 4 heads (2 of 4 heads kept: 2 KV groups × 1 query head): 4 heads removed over " \
           "2 layers." in story
    per_head = titled(at, "Layer 0: s of each head over ρ iterations")
    assert array(per_head["data"][0]["z"]).shape == (3 + 1, 4)  # K iterations and the read-out, 4 heads
    readout = array(per_head["data"][0]["z"])[-1]
    assert readout.sum() == 2 and list(per_head["data"][0]["x"]) == ["h0 · KV 0", "h1 · KV 0", "h2 · KV 1", "h3 · KV 1"]
    every_layer = titled(at, "Every layer: the ρ iteration each head was first marked")
    assert (np.asarray(every_layer["data"][0]["text"]) == "✕").sum() == 4
    open_page(at, "scores")
    assert_clean(at)
    bars = titled(at, "Layer 0: each metric's score of the 4 heads, 2 pruned")
    assert {trace["name"].split(",")[0] for trace in bars["data"]} >= {"spap_last", "flap", "magnitude"}
    open_page(at, "latency")
    assert_clean(at)
    flops = titled(at, "A prefill's FLOPs per token")
    assert {trace["name"] for trace in flops["data"]} >= {"attention context (QKᵀ, AV)", "MLP projections"}
    crossing = next(c.value for c in at.caption if "cost as much as the MLPs" in c.value)
    assert "removing heads saves more per token" in crossing


def test_compare_runs_compares_the_heads_of_runs_that_pruned_heads(app_files):
    """Two runs with half the heads and one without: Compare runs offers the heads per layer, draws
    the heads' errors, their agreement and the map of pruned heads of the two that pruned heads,
    and says which run is not drawn."""
    at = start_app()
    open_page(at, "run_spap")
    for head_sparsity, iterations in ((0.5, 3), (0.5, 4), (0.0, 3)):
        at.slider(key="sparsity").set_value(0.25)
        at.slider(key="head_sparsity").set_value(head_sparsity)
        at.slider(key="K").set_value(iterations)
        click(at, "Run SPAP")
        finish_job(at, "run")
    open_page(at, "compare_runs")
    from spap_service.runs import saved_runs
    from spap_service.sessions import owner_tag

    newest_three = saved_runs(owner=owner_tag(at.session_state["browser_session_id"])).table["run"].tolist()[:3]
    at.multiselect(key="compare_runs").set_value(newest_three).run()
    assert_clean(at)
    at.radio(key="compare_part").set_value("attention heads").run()
    assert_clean(at)
    errors = titled(at, "Relative reconstruction error per layer: attention heads")
    assert len(errors["data"]) == 2  # one line per run that pruned heads
    assert any(c.value == "Run A pruned no heads: not drawn below." for c in at.caption)  # the newest run comes first
    agreement = titled(at, "Agreement of the pruned heads per layer")
    assert len(array(agreement["data"][0]["y"])) == 2  # one point per layer of the tiny model
    maps = [f for f in figures(at) if chart_title(f)[:1] in "BC" and f["data"][0]["type"] == "heatmap"]
    assert [array(m["data"][0]["z"]).shape for m in maps] == [(2, 4), (2, 4)]
    assert all(array(m["data"][0]["z"]).sum() == 2 * 2 for m in maps)  # 2 of 4 heads in each of 2 layers
    assert (maps[0]["layout"]["xaxis"]["title"]["text"] == "head"
            and list(array(maps[0]["data"][0]["x"])) == [0, 1, 2, 3])
    assert any(h.value == "Pruned heads" for h in at.subheader)


def test_a_sweep_point_that_failed_on_its_worker_is_said_and_retried(ran_app, monkeypatch):
    """On Ray a point whose worker died comes back without numbers: the page says which and why,
    draws the others, and the next request computes the table again instead of reusing it."""
    from spap_service import comparisons
    from spap_service.executors import InProcessExecutor, PointResult

    class OneWorkerDies(InProcessExecutor):
        def measure(self, loaded, requests, progress, cancel):
            results = super().measure(loaded, requests, progress, cancel)
            return [PointResult(error="its Ray worker died (RayActorError)"), *results[1:]]

    monkeypatch.setattr(comparisons, "point_executor", OneWorkerDies)
    at = ran_app
    run_sweep(at, ["magnitude", "wanda-sp"], (0.1, 0.3), 0.2)  # a sweep no other test asks for
    assert_clean(at)
    warning = shown(next(w.value for w in at.warning if "points have no result" in w.value))
    assert warning.startswith("1 of 4 points have no result: magnitude at 10%: its Ray worker died (RayActorError)")
    first = session_job(at, "sweep")
    monkeypatch.setattr(comparisons, "point_executor", InProcessExecutor)
    run_sweep(at, ["magnitude", "wanda-sp"], (0.1, 0.3), 0.2)  # the same sweep again
    assert session_job(at, "sweep") is not first  # computed again, not the table with the gap
    assert not any("points have no result" in w.value for w in at.warning)


def test_the_progress_line_says_where_each_run_is_in_process_and_on_ray_workers():
    """The progress bar's text and share, for a run, a sweep in this process, and a sweep whose
    runs go in parallel on Ray workers (each running one with its own layer and ρ iteration)."""
    from pages._job_progress import progress_fraction, progress_text
    from spap_service.jobs import Job, JobProgress, ProgressReporter

    def job(progress: JobProgress) -> Job:
        return Job(id="1", owner="me", label="sweep", kind="sweep", function=lambda *_: None,
                   reporter=ProgressReporter(progress))

    pruning = JobProgress(phase="pruning (spap)", layer=3, n_layers=4, iteration=5, n_iterations=10)
    assert progress_text(job(pruning)) == "Pruning (spap) · layer 3 of 4 · ρ iteration 5 of 10 · 0 s"
    assert progress_fraction(pruning) == pytest.approx(2.5 / 5)  # the pruned perplexity counts as a fifth layer
    last_layer_done = JobProgress(phase="pruned perplexity: batch 0 of 8", layer=4, n_layers=4, iteration=10,
                                  n_iterations=10, batch=0, n_batches=8)
    assert progress_fraction(last_layer_done) == pytest.approx(4 / 5)
    evaluating = JobProgress(**{**vars(last_layer_done), "phase": "pruned perplexity: batch 6 of 8", "batch": 6})
    assert progress_fraction(evaluating) == pytest.approx((4 + 6 / 8) / 5)
    in_process = JobProgress(**{**vars(pruning), "step": 2, "n_steps": 4})
    assert progress_text(job(in_process)).endswith("ρ iteration 5 of 10 · run 2 of 4 · 0 s")
    assert progress_fraction(in_process) == pytest.approx((1 + 2.5 / 5) / 4)
    on_ray = JobProgress(phase="1 of 4 runs done on 2 Ray workers", step=1, n_steps=4, running=(
        JobProgress(**{**vars(pruning), "step": 2}), JobProgress(phase="dense perplexity: batch 1 of 2", step=4)))
    assert progress_text(job(on_ray)) == ("1 of 4 runs done on 2 Ray workers · run 2: pruning (spap), layer 3 of 4, "
                                          "ρ iteration 5 of 10 · run 4: dense perplexity: batch 1 of 2 · 0 s")
    assert progress_fraction(on_ray) == pytest.approx((1 + 2.5 / 5 + 0) / 4)


PAGE_FILES = sorted(path.stem for path in (APP.parent / "pages").glob("[!_]*.py"))


def opened_first(page: str, **link: str) -> AppTest:
    """A new session whose first script run opens `page` with `link` as its query parameters (AppTest
    keeps the router's own elements, the sidebar and the glossary, only in a session's first run)."""
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    at.switch_page(f"pages/{page}.py")
    at.query_params.update(link)
    at.run()
    assert_clean(at)
    return at


def shown_glossary(at: AppTest) -> str:
    (popover,) = [block for block in at.get("popover") if block.proto.popover.label == "Glossary"]
    return "\n".join(element.value for element in popover.get("markdown"))


@pytest.mark.parametrize("page", PAGE_FILES)
def test_the_glossary_is_one_click_from_every_page(app_files, page):
    from spap_service.lesson import GLOSSARY

    text = shown_glossary(opened_first(page))
    assert [line.split("**")[1] for line in text.splitlines()] == list(GLOSSARY)
    assert all(meaning in text for meaning in GLOSSARY.values())


def test_a_presentation_link_opens_the_mode_and_the_toggle_turns_it_off_in_the_link_too(app_files):
    from pages._charts import PRESENTATION_CSS

    at = opened_first("scores", presentation="1")
    (toggle,) = [t for t in at.toggle if t.label == "Presentation mode"]
    assert toggle.value is True
    assert at.session_state["presentation_mode"] is True
    styles = [element.proto.body for element in at.get("html")]
    assert PRESENTATION_CSS in styles
    assert any("fold the sidebar" in body for body in styles)
    toggle.set_value(False).run()
    assert_clean(at)
    assert "presentation" not in at.query_params
    assert at.session_state["presentation_mode"] is False


def test_the_presentation_toggle_puts_the_mode_in_the_link(app_files):
    at = opened_first("mask_evolution")
    (toggle,) = [t for t in at.toggle if t.label == "Presentation mode"]
    assert toggle.value is False and "presentation" not in at.query_params
    assert not any("fold the sidebar" in element.proto.body for element in at.get("html"))
    toggle.set_value(True).run()
    assert_clean(at)
    assert at.query_params["presentation"] == "1"
    open_page(at, "scores")  # the navigation drops a page's parameters; the session's mode comes back
    assert at.query_params["presentation"] == "1"


def test_presentation_mode_folds_the_sidebar_once_per_page_opened():
    def script() -> None:
        import streamlit as st

        from pages._sidebar import fold_sidebar_on_opening

        fold_sidebar_on_opening(st.session_state.get("page", "Scores"), st.session_state.get("on", True))

    at = AppTest.from_function(script)

    def folds(**state) -> int:
        for key, value in state.items():
            at.session_state[key] = value
        at.run()
        assert_clean(at)
        return sum("fold the sidebar" in element.proto.body for element in at.get("html"))

    assert folds() == 1  # the page opens
    assert folds() == 0  # a rerun on it: a sidebar the lecturer opened stays open
    assert folds(page="Latency") == 1  # the next page opens
    assert folds(on=False) == 0
    assert folds(on=True) == 1  # the mode turned on again


# ------------------------------------------------- sweeps and scans over calibration seeds (issue 35)


def test_a_sweep_over_two_calibration_seeds_draws_its_intervals_and_shows_its_verdicts(ran_app):
    """Two seeds, set beside the run button: the estimate counts them, every point is their combined
    perplexity with its interval (the chart's error bars, the table's "ppl [low, high]; 2 seeds …"),
    magnitude's verdict against spap is in the table, and the cached table's key holds the seeds."""
    from spap_service.comparisons import RESULT_TABLES, perplexity_cell, ratio_cell

    at = ran_app
    open_page(at, "perplexity_sweep")
    at.multiselect(key="sweep_methods").set_value(["spap", "magnitude"])
    at.slider(key="sweep_range").set_value((0.3, 0.3))
    at.number_input(key="sweep_seeds").set_value(2).run()
    assert any("over 2 calibration seeds (2 times the runs of one seed)" in c.value for c in at.caption)
    click(at, "Run sweep")
    finish_job(at, "sweep")
    assert_clean(at)
    request = at.session_state["table_requests"]["sweep"]
    assert "|seeds=2|" in request.key
    table = RESULT_TABLES.get(request.key)
    assert (table["seeds"] == 2).all() and table["ppl_seed_low"].notna().all()
    chart = titled(at, "Perplexity vs sparsity")
    for trace in (t for t in chart["data"] if not t["name"].startswith("dense")):
        row = table[table["method"] == trace["name"]].iloc[0]
        bars = trace["error_y"]
        assert array(bars["array"]) == pytest.approx([row["ppl_ci95_high"] - row["perplexity"]])
        assert array(bars["arrayminus"]) == pytest.approx([row["perplexity"] - row["ppl_ci95_low"]])
    perplexities, verdicts = (frame.value for frame in at.dataframe[:2])
    for method in ("spap", "magnitude"):
        row = table[table["method"] == method].iloc[0]
        assert perplexities.loc["30%", method] == perplexity_cell(row) and "; 2 seeds " in perplexity_cell(row)
    magnitude = table[table["method"] == "magnitude"].iloc[0]
    assert verdicts.loc["30%", "magnitude"] == ratio_cell(magnitude, "spap")
    assert magnitude["verdict_vs_spap"] in ("lower than spap", "higher than spap") or \
        magnitude["verdict_vs_spap"].startswith("not distinguishable on these ")


def test_a_scan_over_two_calibration_seeds_compares_every_value_with_the_default_one(ran_app):
    """The scan adds the fixed settings' sparsity (25%) to the two values chosen and says so; the
    perplexity panel draws each point's interval; the table shows it and each value's verdict
    against the default; the sentence under the chart quotes those verdicts."""
    from spap_service.comparisons import RESULT_TABLES, perplexity_cell, ratio_cell

    at = ran_app
    open_page(at, "sensitivity")
    at.selectbox(key="scan_parameter").set_value("sparsity").run()
    at.number_input(key="scan_low_sparsity").set_value(0.4)
    at.number_input(key="scan_high_sparsity").set_value(0.5)
    at.slider(key="scan_points").set_value(2)
    at.number_input(key="scan_seeds").set_value(2)
    click(at, "Run scan")
    finish_job(at, "scan")
    assert_clean(at)
    request = at.session_state["table_requests"]["scan"]
    table = RESULT_TABLES.get(request.key)
    assert table["value"].tolist() == pytest.approx([0.25, 0.4, 0.5]) and table["default"].tolist() == [True, False,
                                                                                                        False]
    assert (table["seeds"] == 2).all() and "|seeds=2" in request.key
    assert any("so the scan added it as a point: every value is compared with it" in c.value for c in at.caption)
    chart, sentence = picture_first(at)
    bars = chart["data"][1]["error_y"]
    assert bars["symmetric"] is False
    assert array(bars["array"]) == pytest.approx((table["ppl_ci95_high"] - table["perplexity"]).tolist())
    assert array(bars["arrayminus"]) == pytest.approx((table["perplexity"] - table["ppl_ci95_low"]).tolist())
    shown_table = at.dataframe[0].value
    assert shown_table["perplexity"].tolist() == [perplexity_cell(row) for _, row in table.iterrows()]
    assert shown_table["vs the default value"].tolist() == [ratio_cell(row, "default") for _, row in table.iterrows()]
    assert shown_table["vs the default value"].iloc[0] == "reference"
    assert f"Against the default value, 25% (perplexity {perplexity_cell(table.iloc[0])}), the perplexity is " \
        in shown(sentence)
    alike = table["verdict_vs_default"].iloc[1:].str.startswith("not distinguishable").all()
    assert ("are within the noise of the evaluation and the calibration" in sentence) == alike


# Intervals and verdicts on a run's results, the saved runs and Compare runs (issue 35): every number
# below is recomputed from the record's window losses, not read back from the function that wrote it.

def interval_words(window_nll: list[float]) -> str:
    """'[41.90, 43.57]': the 95% interval of a perplexity from its window losses, as the pages write it."""
    from spap_core.evaluation.intervals import perplexity_interval
    from spap_service.uncertainty import number

    low, high = perplexity_interval(window_nll)
    return f"[{number(low)}, {number(high)}]"


def copied_run(saved, drop: tuple[str, ...] = ()):
    """Another folder holding the saved run `saved` (as another run of the same browser), its record
    without the keys `drop` (as runs saved before they kept them); the caller removes it."""
    copy = saved.with_name(saved.name[:-1] + ("0" if saved.name[-1] != "0" else "1"))
    shutil.copytree(saved, copy)
    record = json.loads((copy / "results.json").read_text())
    for key in drop:
        del record[key]
    (copy / "results.json").write_text(json.dumps(record))
    return copy


def test_a_runs_perplexities_show_their_intervals_and_the_pruned_model_its_verdict_against_dense(ran_app):
    from spap_core.evaluation.intervals import paired_comparison

    at = ran_app
    open_page(at, "run_spap")
    record = at.session_state["latest_run"].record
    assert len(record["window_nll"]) == len(record["window_nll_dense"]) == record["eval_windows"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Perplexity, pruned"] == f"{record['ppl']:.2f}"
    captions = [shown(caption.value) for caption in at.caption]
    assert (f"95% intervals over the {record['eval_windows']} evaluation windows: dense {record['ppl_dense']:.2f} "
            f"{interval_words(record['window_nll_dense'])}, pruned {record['ppl']:.2f} "
            f"{interval_words(record['window_nll'])}.") in captions
    comparison = paired_comparison(record["window_nll"], record["window_nll_dense"], record["eval_len"] - 1)
    low, high = comparison.ci95
    tokens = record["eval_windows"] * (record["eval_len"] - 1)
    lower = {"A is lower": "the pruned model's perplexity is lower than the dense model's",
             "B is lower": "the dense model's perplexity is lower than the pruned model's"}.get(
        comparison.verdict, f"not distinguishable on these {tokens:,} tokens")
    assert (f"Pruned against dense, window by window: ratio {comparison.ratio:.3f} [{low:.3f}, {high:.3f}]: {lower}."
            in [shown(text.value) for text in at.markdown])
    assert not any(shown(text.value).startswith("Over its calibration seeds") for text in at.markdown)  # one seed
    table = next(frame.value for frame in at.dataframe if "95% interval" in frame.value.columns)
    row = table[table["run"] == record_folder(at)].iloc[0]
    assert row["95% interval"] == interval_words(record["window_nll"]) and row["seeds"] == 1
    assert row["ppl pruned"] == record["ppl"]  # still a number, to sort by
    from spap_core.evaluation.intervals import perplexity_interval
    from spap_service.runs import saved_runs

    downloaded = saved_runs().table.set_index("run").loc[record_folder(at)]  # what "Saved runs (.csv)" writes
    assert (downloaded["ppl_ci95_low"], downloaded["ppl_ci95_high"]) == pytest.approx(
        perplexity_interval(record["window_nll"]))


def record_folder(at: AppTest) -> str:
    return at.session_state["latest_run"].saved_to.name


def test_a_run_saved_before_intervals_shows_no_interval_and_no_verdict(ran_app):
    saved = ran_app.session_state["latest_run"].saved_to
    older = copied_run(saved, drop=("window_nll", "window_nll_dense", "ppl_ci95", "ppl_dense_ci95"))
    try:
        at = link_session(older.name)
        open_page(at, "run_spap")
        record = at.session_state["latest_run"].record
        assert record["window_nll"] == [] and record["ppl_ci95"] is None
        assert (f"95% intervals over the {record['eval_windows']} evaluation windows: dense {record['ppl_dense']:.2f} "
                f"(no interval), pruned {record['ppl']:.2f} (no interval).") in [shown(c.value) for c in at.caption]
        assert ("Pruned against dense, window by window: no verdict: the pruned model and the dense model kept no "
                "window losses.") in [shown(text.value) for text in at.markdown]
        at.toggle(key="saved_runs_everyone").set_value(True).run()
        assert_clean(at)
        table = next(frame.value for frame in at.dataframe if "95% interval" in frame.value.columns)
        assert table.set_index("run").loc[older.name, "95% interval"] == "no interval"
    finally:
        shutil.rmtree(older)


def test_a_run_over_two_calibration_seeds_shows_their_range_against_the_window_interval(app_files):
    from spap_core.evaluation.intervals import perplexity_of

    at = start_app()
    open_page(at, "run_spap")
    at.slider(key="sparsity").set_value(0.25)
    at.slider(key="K").set_value(2)
    at.number_input(key="seeds").set_value(2)
    click(at, "Run SPAP")
    assert_clean(at)
    assert session_job(at, "run").label == "SPAP run at 25% sparsity over 2 calibration seeds"
    assert any(caption.value.startswith("This run over 2 calibration seeds (2 times the runs of one seed): ")
               for caption in at.caption)
    finish_job(at, "run")
    record = at.session_state["latest_run"].record
    assert record["seeds"] == [0, 1] and len(record["window_nll_by_seed"]) == 2
    assert record["window_nll_by_seed"][0] == record["window_nll"]
    by_seed = sorted(perplexity_of(float(np.mean(row))) for row in record["window_nll_by_seed"])
    (sentence,) = [shown(text.value) for text in at.markdown if shown(text.value).startswith("Over its calibration")]
    assert sentence.startswith(f"Over its calibration seeds: {record['ppl_seeds']:.2f} [")
    assert f"; 2 seeds {by_seed[0]:.2f} to {by_seed[1]:.2f}, windows and seeds combined. " in sentence
    window_low, window_high = (float(bound) for bound in interval_words(record["window_nll"]).strip("[]").split(", "))
    inside = window_low <= round(by_seed[0], 2) and round(by_seed[1], 2) <= window_high
    reading = "inside" if inside else ("wider than" if by_seed[1] - by_seed[0] > window_high - window_low
                                       else "reaching past")
    assert (f"The 2 calibration seeds give {by_seed[0]:.2f} to {by_seed[1]:.2f}, {reading} the evaluation's interval "
            f"[{window_low:.2f}, {window_high:.2f}]: which calibration tokens were drawn matters") in sentence
    table = next(frame.value for frame in at.dataframe if "seeds" in frame.value.columns)
    assert table.set_index("run").loc[record_folder(at), "seeds"] == 2


def test_compare_runs_says_a_run_against_itself_is_not_distinguishable_and_other_windows_not_comparable(app_files):
    at = run_spap(0.25, 2)
    first = at.session_state["latest_run"]
    copy = copied_run(first.saved_to)
    open_page(at, "compare_runs")
    assert set(at.multiselect(key="compare_runs").value) == {first.saved_to.name, copy.name}
    record = first.record
    tokens = record["eval_windows"] * (record["eval_len"] - 1)
    assert [shown(info.value) for info in at.info][0] == (
        f"Of 2 runs, in perplexity (lower is better), run B is not distinguishable from run A on these {tokens:,} "
        "tokens.")
    table = next(frame.value for frame in at.dataframe if "verdict" in frame.value.columns)
    assert table["verdict"].tolist() == ["the reference", f"not distinguishable on these {tokens:,} tokens"]
    assert table["ratio to run A"].tolist() == ["the reference", "1.000 [1.000, 1.000]"]
    assert table["perplexity"].tolist() == [f"{record['ppl']:.2f} {interval_words(record['window_nll'])}"] * 2
    chart = titled(at, "Pruned perplexity of each run, with its 95% interval")
    low, high = (float(bound) for bound in interval_words(record["window_nll"]).strip("[]").split(", "))
    assert array(chart["data"][0]["error_y"]["array"]) == pytest.approx([high - record["ppl"]] * 2, abs=0.006)
    assert array(chart["data"][0]["error_y"]["arrayminus"]) == pytest.approx([record["ppl"] - low] * 2, abs=0.006)

    open_page(at, "model_data")
    at.number_input(key="data_eval_windows").set_value(record["eval_windows"] - 1)
    click(at, "Use this data")
    open_page(at, "run_spap")
    click(at, "Run SPAP")
    finish_job(at, "run")
    fewer = at.session_state["latest_run"]
    assert fewer.record["eval_windows"] == record["eval_windows"] - 1
    open_page(at, "compare_runs")
    at.multiselect(key="compare_runs").set_value([first.saved_to.name, fewer.saved_to.name]).run()
    assert_clean(at)
    assert [shown(info.value) for info in at.info][0] == (
        "Of 2 runs, in perplexity (lower is better), run B is not comparable pairwise with run A: different "
        "evaluation windows (window count).")
    at.selectbox(key="compare_reference").set_value(1).run()  # the reference the user picks
    assert [shown(info.value) for info in at.info][0] == (
        "Of 2 runs, in perplexity (lower is better), run A is not comparable pairwise with run B: different "
        "evaluation windows (window count).")
