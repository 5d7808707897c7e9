"""Time estimates count a job's work in dense forward passes at the model's measured speed, and its
per-layer solves in factorisations of the MLP's width timed on the machine: the recovery, the
calibration size, a cached dense perplexity and a sweep's shared evaluation move them as the work
does, and the solves do not grow with the calibration."""

from dataclasses import replace

import pytest

from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.registry import PruneSettings, with_options
from spap_core.runner.spec import ParameterBudget
from spap_service.data import DataSpec, TextChoice
from spap_service.estimates import ModelSpeed, duration, latency_seconds, many_runs_seconds, model_speed, run_seconds
from spap_service.runs import RunRequest

SPEED = ModelSpeed(tokens_per_s=1000.0, step_s=0.01)
TEXT = TextChoice(kind="file", path="x.txt")
DATA = DataSpec(calibration=TEXT, evaluation=TEXT, nsamples=8, seqlen=250, eval_windows=4, eval_len=250, batch_size=4)


def request(settings: PruneSettings, data: DataSpec = DATA) -> RunRequest:
    return RunRequest(settings=settings, seed=0, data=data)


def test_a_run_costs_its_pruning_passes_and_two_evaluations():
    without = with_options(PruneSettings(), altmin=AltMinSettings(rounds=0))
    seconds = run_seconds(SPEED, request(without))
    assert seconds == pytest.approx(1.0 + (1.42 * 2000 + 2 * 1000) / 1000)
    assert run_seconds(SPEED, request(without), dense_cached=True) == pytest.approx(seconds - 1.0)
    assert run_seconds(SPEED, request(PruneSettings())) > seconds  # the default recovery adds passes
    assert run_seconds(SPEED, request(without, replace(DATA, nsamples=16))) > seconds
    # FLAP's calibration forward is SPAP's; its solves are fewer (the next test)
    assert run_seconds(SPEED, request(PruneSettings(method="flap"))) == pytest.approx(seconds)
    with_heads = replace(without, head_sparsity=0.3)  # each layer's heads first: about half a pass more
    assert run_seconds(SPEED, request(with_heads)) == pytest.approx(seconds + 0.54 * 2000 / 1000)
    budgeted = replace(request(without), budget=ParameterBudget(0.2))  # the split's capture, then maybe heads
    assert run_seconds(SPEED, budgeted) == pytest.approx(seconds + (1.42 + 0.54) * 2000 / 1000)


def test_the_solves_cost_factorisations_per_layer_whatever_the_calibration_size():
    timed = replace(SPEED, factorisation_s=0.05, layers=10)
    without = with_options(PruneSettings(), altmin=AltMinSettings(rounds=0))
    for data in (DATA, replace(DATA, nsamples=32)):
        solves = run_seconds(timed, request(without, data)) - run_seconds(SPEED, request(without, data))
        assert solves == pytest.approx(3.3 * 10 * 0.05)
        flap = request(PruneSettings(method="flap"), data)
        assert run_seconds(timed, flap) - run_seconds(SPEED, flap) == pytest.approx(1.05 * 10 * 0.05)
    recovery = with_options(PruneSettings(), altmin=AltMinSettings(rounds=2))
    assert run_seconds(timed, request(recovery)) - run_seconds(SPEED, request(recovery)) \
        == pytest.approx((3.3 + 2 * 5.6) * 10 * 0.05)  # each round's refit factorises every layer again


def test_a_sweep_evaluates_the_dense_model_once():
    runs = [request(PruneSettings(method="flap", sparsity=s)) for s in (0.2, 0.3, 0.4)]
    assert many_runs_seconds(SPEED, runs) == pytest.approx(3 * run_seconds(SPEED, runs[0]) - 2 * 1.0)


def test_latency_times_both_models_every_repeat():
    assert latency_seconds(SPEED, 100, 10, repeats=3, warmup=1) == pytest.approx(2 * 4 * (0.1 + 0.1))
    assert duration(42.4) == "about 42 s" and duration(600) == "about 10 min"


def test_the_speed_is_measured_once_per_model(tiny, monkeypatch):
    first = model_speed(tiny)
    assert first.tokens_per_s > 0 and first.step_s > 0 and first.factorisation_s > 0
    assert first.layers == len(tiny.family.decoder_layers(tiny.model))
    monkeypatch.setattr(tiny.model, "forward", lambda *a, **k: pytest.fail("measured again"))
    assert model_speed(tiny) is first


def test_a_recovery_costs_its_steps_its_held_out_checks_and_a_second_evaluation():
    from spap_core.recovery.settings import RecoverySettings

    plain = request(PruneSettings(method="flap"))
    seconds = run_seconds(SPEED, plain)
    lora = RecoverySettings(mode="lora", steps=100, batch=4, heldout_every=10)
    # 100 steps × 4 windows × 250 tokens at 2 forward passes a token, 10 held-out checks of 4 × 250
    # tokens, the 4 × 250 evaluation tokens again
    assert run_seconds(SPEED, replace(plain, recovery=lora)) == pytest.approx(
        seconds + (100 * 1000 * 2.0 + 10 * 4 * 250 + 1000) / 1000)
    distill = replace(lora, mode="distill", heldout_every=30)  # the dense logits once; checks at 30, 60, 90, 100
    assert run_seconds(SPEED, replace(plain, recovery=distill)) == pytest.approx(
        seconds + (100 * 1000 * 2.0 + 2000 + 4 * 4 * 250 + 1000) / 1000)
    wide = replace(lora, batch=64)  # a batch wider than the 8 calibration windows takes each once
    assert run_seconds(SPEED, replace(plain, recovery=wide)) == pytest.approx(
        seconds + (100 * 2000 * 2.0 + 10 * 4 * 250 + 1000) / 1000)


def test_the_recoverys_share_of_a_run_is_what_it_adds_to_the_run():
    from spap_core.recovery.settings import RecoverySettings
    from spap_service.estimates import recovery_seconds

    plain = request(PruneSettings(method="flap"))
    assert recovery_seconds(SPEED, plain) == 0.0
    recovered = replace(plain, recovery=RecoverySettings(mode="lora+distill", steps=40, batch=2, heldout_every=7))
    assert recovery_seconds(SPEED, recovered) > 0
    added = run_seconds(SPEED, recovered) - run_seconds(SPEED, plain)
    assert recovery_seconds(SPEED, recovered) == pytest.approx(added)


def test_a_method_or_allocation_that_measures_the_dense_model_first_costs_its_backward_passes():
    from spap_core.methods.taylor import TaylorSettings

    magnitude = run_seconds(SPEED, request(PruneSettings(method="magnitude")))
    # Taylor: its 8 default windows (all 8 calibration windows here) of 250 tokens, 2 forward passes a token
    assert run_seconds(SPEED, request(PruneSettings(method="taylor"))) == pytest.approx(magnitude + 8 * 250 * 2 / 1000)
    fewer = replace(PruneSettings(method="taylor"), options=TaylorSettings(windows=3))
    assert run_seconds(SPEED, request(fewer)) == pytest.approx(magnitude + 3 * 250 * 2 / 1000)
    # no more windows than the calibration has
    assert run_seconds(SPEED, request(PruneSettings(method="taylor"), replace(DATA, nsamples=2))) \
        == pytest.approx(run_seconds(SPEED, request(PruneSettings(method="magnitude"), replace(DATA, nsamples=2)))
                         + 2 * 250 * 2 / 1000)
    flap = run_seconds(SPEED, request(PruneSettings(method="flap")))
    fisher = request(PruneSettings(method="flap", allocation="fisher"))
    assert run_seconds(SPEED, fisher) == pytest.approx(flap + 8 * 250 * 2 / 1000)
