"""What Compare runs says about two or more saved runs: how much their pruned sets agree, against the
most two sets of their sizes can agree, and which runs form a perplexity-against-sparsity curve."""

from types import SimpleNamespace

import numpy as np
import pytest

from spap_core.methods.registry import PruneSettings
from spap_core.pipeline.parameters import with_values
from spap_core.pipeline.walk import LayerRecord
from spap_service.compare import containment_notes, lone_points_note, pruned_overlap, sparsity_curves
from spap_service.data import DataSpec, TextChoice
from spap_service.runs import RunRequest

WIDTH, LAYERS = 1536, 30
DATA = DataSpec(calibration=TextChoice(kind="file", path="x.txt"), evaluation=TextChoice(kind="file", path="x.txt"),
                nsamples=8, seqlen=128, eval_windows=4, eval_len=128, batch_size=4)


def saved_run(sparsity: float, pruned: list[set[int]], iterations: int = 6, finished_at: float = 0.0,
              perplexity: float = 50.0) -> SimpleNamespace:
    """A saved run as the page reads it: its request, its record and each layer's pruned channels."""
    layers = [LayerRecord(layer=index, width=WIDTH, keep=np.array(sorted(set(range(WIDTH)) - channels)), scores={},
                          objective=None, dense_objective=1.0) for index, channels in enumerate(pruned)]
    settings = with_values(PruneSettings(method="spap", sparsity=sparsity), {"K": iterations})
    record = {"ppl": perplexity, "ppl_dense": 30.0, "params_after": 1e6, "eval_windows": 4, "eval_len": 128,
              "eval_source": "x.txt", "model": "tiny"}
    return SimpleNamespace(request=RunRequest(settings=settings, seed=0, data=DATA), record=record,
                           finished_at=finished_at, result=SimpleNamespace(layers=layers, heads=None))


def test_a_run_whose_pruned_channels_lie_inside_the_others_is_said_to_agree_at_its_ceiling():
    """20% and 50% of 1,536 channels: 307 inside 768 in every layer, an agreement of exactly 307/768."""
    low = saved_run(0.2, [set(range(307))] * LAYERS)
    high = saved_run(0.5, [set(range(768))] * LAYERS)
    overlap = pruned_overlap([low, high])
    assert overlap["jaccard"].tolist() == overlap["ceiling"].tolist() == [pytest.approx(307 / 768)] * LAYERS
    assert containment_notes(overlap) == [
        "In every layer, the 307 channels run A (spap 20%) pruned are among the 768 run B (spap 50%) pruned: their "
        "agreement is 307/768 = 0.40, the most two sets of these sizes can reach (the dotted ceiling)."]


def test_containment_in_most_layers_is_counted_and_in_few_layers_is_not_said():
    inside, outside = set(range(307)), set(range(1000, 1307))
    high = saved_run(0.5, [set(range(768))] * LAYERS)
    mostly = saved_run(0.2, [inside] * 20 + [outside] * 10)
    note = containment_notes(pruned_overlap([high, mostly]))[0]
    assert note.startswith("In 20 of 30 layers, the 307 channels run B (spap 20%) pruned are among the 768 run A")
    rarely = saved_run(0.2, [inside] * 15 + [outside] * 15)
    overlap = pruned_overlap([high, rarely])
    assert containment_notes(overlap) == []
    assert (overlap["jaccard"] <= overlap["ceiling"]).all() and overlap["jaccard"].min() == 0


def test_runs_that_pruned_the_same_channels_are_said_to_agree_fully():
    same = [set(range(307))] * LAYERS
    assert containment_notes(pruned_overlap([saved_run(0.2, same), saved_run(0.2, same, iterations=3)])) == [
        "In every layer, run A (spap 20%) and run B (spap 20%) pruned the same 307 channels: their agreement is 1."]


def test_curves_are_named_by_what_they_hold_and_a_lone_run_says_what_to_add():
    pruned = [set(range(307))] * 2
    runs = [saved_run(0.2, pruned, iterations=6), saved_run(0.5, pruned, iterations=6, perplexity=80.0),
            saved_run(0.3, pruned, iterations=3)]
    curves = sparsity_curves(runs)
    assert dict(zip(curves["run"].str[0], curves["curve"])) == {"A": "spap, K = 6", "B": "spap, K = 6",
                                                                "C": "spap, K = 3"}
    assert dict(zip(curves["run"].str[0], curves["points"])) == {"A": 2, "B": 2, "C": 1}
    assert lone_points_note(curves) == (
        "No curve through run C (spap, K = 3, 30%): a curve needs two runs that differ only in their sparsity. "
        "Save a run of the same settings at another sparsity to draw one through it.")
    assert lone_points_note(sparsity_curves(runs[:2])) is None
    assert set(sparsity_curves(runs[:2])["curve"]) == {"spap"}  # one curve: its method says what it holds


def test_the_error_reading_names_the_closest_run_and_follows_the_data():
    import pandas as pd

    from spap_service.compare import error_reading

    errors = pd.DataFrame({"run": ["A", "A", "A", "B", "B", "B"], "layer": [0, 1, 2, 0, 1, 2],
                           "relative_error": [0.02, 0.03, 0.01, 0.01, 0.02, 0.05]})
    assert error_reading(errors).endswith("Run A has the lowest mean, 0.02 against 0.0267 for run B, and is lowest "
                                          "in 1 of 3 layers.")  # B wins two layers, A the mean
    errors.loc[5, "relative_error"] = 0.005  # the data changes, the sentence follows
    assert error_reading(errors).endswith("Run B has the lowest mean, 0.0117 against 0.02 for run A, and is lowest "
                                          "in 3 of 3 layers.")
    assert "only one drawn" in error_reading(errors[errors["run"] == "A"])
    assert "no error to draw" in error_reading(errors.iloc[0:0])


# Intervals and verdicts: each run's perplexity with its interval, its verdict against a reference run
# and against its dense model, and what its calibration seeds' spread says.

WINDOWS = [3.70, 3.80, 3.60, 3.75]
DENSE_WINDOWS = [3.50, 3.60, 3.45, 3.55]


def interval_record(window_nll: list[float] = WINDOWS, **fields) -> dict:
    """A run record as read_record gives it: its perplexity with its interval from its window losses."""
    from spap_core.evaluation.intervals import perplexity_interval, perplexity_of

    return {"ppl": perplexity_of(np.mean(window_nll)), "ppl_ci95": list(perplexity_interval(window_nll)),
            "window_nll": list(window_nll), "window_nll_dense": list(DENSE_WINDOWS), "eval_len": 128,
            "eval_windows": len(window_nll), "eval_source": "x.txt", "model": "tiny", "seed": 0, **fields}


def test_the_pruned_model_is_compared_with_its_dense_model_window_by_window_and_named():
    from spap_core.evaluation.intervals import paired_comparison
    from spap_service.compare import dense_verdict_line

    record = interval_record()
    comparison = paired_comparison(WINDOWS, DENSE_WINDOWS, 127)
    low, high = comparison.ci95
    assert low > 1  # every window is harder for the pruned model: the dense one is lower
    assert dense_verdict_line(record) == (f"Pruned against dense, window by window: ratio {comparison.ratio:.3f} "
                                          f"[{low:.3f}, {high:.3f}]: the dense model's perplexity is lower than the "
                                          "pruned model's.")
    same = interval_record(DENSE_WINDOWS)
    assert dense_verdict_line(same) == ("Pruned against dense, window by window: ratio 1.000 [1.000, 1.000]: "
                                        "not distinguishable on these 508 tokens.")
    saved_before = {**record, "window_nll": [], "window_nll_dense": [], "ppl_ci95": None}
    assert dense_verdict_line(saved_before) == ("Pruned against dense, window by window: no verdict: the pruned "
                                                "model and the dense model kept no window losses.")


def test_the_seeds_spread_is_read_against_the_window_interval_and_follows_the_data():
    from spap_core.evaluation.intervals import seed_fields
    from spap_service.compare import record_perplexity, record_perplexity_text, seeds_reading

    def seeded(*shifts: float) -> dict:
        rows = [[loss + shift for loss in WINDOWS] for shift in (0.0, *shifts)]
        return interval_record(**seed_fields(list(range(len(rows))), rows))

    assert seeds_reading(interval_record()) is None  # one seed: nothing to weigh
    close = seeded(0.01, -0.005)
    low, high = close["ppl_seed_range"]
    window_low, window_high = close["ppl_ci95"]
    assert window_low < low < high < window_high
    assert seeds_reading(close) == (f"The 3 calibration seeds give {low:.2f} to {high:.2f}, inside the evaluation's "
                                    f"interval [{window_low:.2f}, {window_high:.2f}]: which calibration tokens were "
                                    "drawn matters less than which windows were read.")
    combined = record_perplexity(close)
    assert combined.perplexity == close["ppl_seeds"] and combined.seeds == 3
    assert record_perplexity_text(close) == (f"{close['ppl_seeds']:.2f} [{close['ppl_seeds_ci95'][0]:.2f}, "
                                             f"{close['ppl_seeds_ci95'][1]:.2f}]; 3 seeds {low:.2f} to {high:.2f}")
    assert ", wider than the evaluation's interval" in seeds_reading(seeded(0.3, -0.2))
    assert ", reaching past the evaluation's interval" in seeds_reading(seeded(0.22))
    assert seeds_reading({**close, "ppl_ci95": None}).endswith("so there is no interval to weigh them against.")


def test_every_run_is_compared_with_the_reference_and_the_sentence_follows_the_verdicts():
    from spap_service.compare import perplexity_table, reference_comparisons, run_names, verdict_sentence

    runs = [saved_run(0.2, [set()]) for _ in range(4)]
    runs[0].record.update(interval_record())
    runs[1].record.update(interval_record())  # the same losses: not distinguishable
    runs[2].record.update(interval_record([loss - 0.3 for loss in WINDOWS]))  # clearly lower
    runs[3].record.update(interval_record(WINDOWS * 2))  # eight windows: not the same ones
    names = run_names(runs)
    comparisons = reference_comparisons(runs)
    assert [comparisons[index].verdict for index in (1, 2)] == ["not distinguishable on these 508 tokens",
                                                               "A is lower"]
    assert verdict_sentence(names, comparisons) == (
        "Of 4 runs, in perplexity (lower is better), run B is not distinguishable from run A on these 508 tokens; "
        "run C is lower than run A; run D is not comparable pairwise with run A: different evaluation windows "
        "(window count).")
    table = perplexity_table(runs)
    assert table["verdict"].tolist() == ["the reference", "not distinguishable on these 508 tokens",
                                         "run C's perplexity is lower than run A's",
                                         "not comparable pairwise: different evaluation windows (window count)"]
    assert table["ratio"].iloc[1] == 1.0 and table["against"].iloc[1] == "1.000 [1.000, 1.000]"
    assert table[["ppl_ci95_low", "ppl_ci95_high"]].iloc[0].tolist() == runs[0].record["ppl_ci95"]
    against_c = verdict_sentence(names, reference_comparisons(runs, reference=2), reference=2)
    assert against_c.startswith("Of 4 runs, in perplexity (lower is better), run A is higher than run C; "
                                "run B is higher than run C;")
    runs[1].record.update(window_nll=[], ppl_ci95=None)  # saved before runs kept their window losses
    assert "run B has no verdict against run A: run B kept no window losses" in verdict_sentence(
        names, reference_comparisons(runs))
    assert perplexity_table(runs)["perplexity"].iloc[1].endswith("(no interval)")


def recovered_record(after: list[float] = DENSE_WINDOWS, before: list[float] = WINDOWS) -> dict:
    """A run record with a recovery: `before` its window losses before it, `after` after it."""
    from dataclasses import asdict

    from spap_core.evaluation.intervals import perplexity_interval, perplexity_of
    from spap_core.recovery.settings import RecoverySettings

    recovery = {"settings": asdict(RecoverySettings(mode="lora", steps=3, heldout_every=2)), "steps_done": 3,
                "final_loss": 3.25, "seconds": 1.5, "losses": [3.5, 3.4, 3.25], "heldout_ppl": [[2, 40.0], [3, 38.5]]}
    return interval_record(after, ppl_before_recovery=perplexity_of(np.mean(before)),
                           ppl_before_recovery_ci95=list(perplexity_interval(before)),
                           window_nll_before_recovery=list(before), recovery=recovery)


def test_a_recovered_run_is_read_before_and_after_its_recovery_with_the_paired_verdict():
    from spap_core.evaluation.intervals import paired_comparison
    from spap_core.recovery.settings import RecoverySettings
    from spap_service.compare import before_recovery_text, recovery_summary, recovery_verdict_line
    from spap_service.uncertainty import perplexity_text

    record = recovered_record()
    before = perplexity_text(record["ppl_before_recovery"], record["ppl_before_recovery_ci95"])
    assert before_recovery_text(record) == before
    assert recovery_summary(record) == (
        f"Pruned (before recovery): {before}; after recovery: {perplexity_text(record['ppl'], record['ppl_ci95'])} "
        f"({RecoverySettings(mode='lora', steps=3, heldout_every=2).describe()}; 3 steps in 1.5 s, final training "
        "loss 3.250).")
    comparison = paired_comparison(DENSE_WINDOWS, WINDOWS, 127)
    low, high = comparison.ci95
    assert high < 1  # every window is easier after the recovery
    assert recovery_verdict_line(record) == (
        f"After recovery against before, window by window: ratio {comparison.ratio:.3f} [{low:.3f}, {high:.3f}]: "
        "the recovered model's perplexity is lower than the unrecovered model's.")
    worse = recovered_record(after=WINDOWS, before=DENSE_WINDOWS)
    assert recovery_verdict_line(worse).endswith("the unrecovered model's perplexity is lower than the recovered "
                                                 "model's.")
    old = interval_record()  # saved before recoveries existed: the fields are absent
    assert before_recovery_text(old) == "–"
    assert recovery_summary(old) is None and recovery_verdict_line(old) is None
    assert recovery_summary({**old, "ppl_before_recovery": None, "recovery": None}) is None


def test_compare_runs_gives_a_recovered_run_its_perplexity_before_recovery_and_others_a_dash():
    from spap_service.compare import before_recovery_text, perplexity_table

    runs = [saved_run(0.2, [set()]) for _ in range(2)]
    runs[0].record.update(interval_record())
    runs[1].record.update(recovered_record())
    assert perplexity_table(runs)["before recovery"].tolist() == ["–", before_recovery_text(runs[1].record)]
