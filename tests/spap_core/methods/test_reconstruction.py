"""Selection against selection with the same reconstruction: any method's kept channels can be
refitted the way SPAP refits them (and followed by its alternating minimization), in the library,
the CLI and the run record, and what that changes is only the weight update, never the selection."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
from family_models import loaded_family

from spap_core.cli import main
from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.reconstruction import Reconstruction
from spap_core.methods.registry import METHODS, PruneSettings, with_options
from spap_core.pipeline.experiment import plan_run
from spap_core.pipeline.walk import prune_model

CALIBRATION = torch.randint(3, 200, (8, 32), generator=torch.Generator().manual_seed(0))
REFIT = Reconstruction()
REFIT_ALTMIN = Reconstruction(altmin=True)


def first_layer(tiny, settings: PruneSettings):
    return prune_model(tiny, CALIBRATION, settings, batch_size=4).layers[0]


@pytest.mark.parametrize("method", [name for name in METHODS if name != "spap"])
def test_the_refit_keeps_each_methods_selection_and_never_fits_worse_than_its_own_update(tiny, method):
    own = first_layer(tiny, PruneSettings(method=method, sparsity=0.4))
    refitted = first_layer(tiny, PruneSettings(method=method, sparsity=0.4, reconstruction=REFIT))
    # layer 0 sees the same inputs either way, so the same channels are chosen
    assert own.keep.tolist() == refitted.keep.tolist()
    assert set(refitted.scores) == set(own.scores)
    if method in ("magnitude", "wanda-sp", "flap"):
        # their own update (dense columns, FLAP's mean bias) is a point the ridge refit towards the
        # dense weights could have chosen at no ridge cost, so the refit's error is no larger
        assert refitted.objective <= own.objective * (1 + 1e-6)


def test_spap_with_its_refit_and_altmin_is_spap_and_with_the_refit_alone_is_spap_without_altmin(tiny):
    spap = PruneSettings(sparsity=0.4)
    default = prune_model(tiny, CALIBRATION, spap, batch_size=4)
    matched = prune_model(tiny, CALIBRATION, replace(spap, reconstruction=REFIT_ALTMIN), batch_size=4)
    assert [layer.objective for layer in matched.layers] == pytest.approx([layer.objective for layer in default.layers])
    no_altmin = prune_model(tiny, CALIBRATION, with_options(spap, altmin=AltMinSettings(rounds=0)), batch_size=4)
    refit_only = prune_model(tiny, CALIBRATION, replace(spap, reconstruction=REFIT), batch_size=4)
    assert [layer.objective for layer in refit_only.layers] == pytest.approx(
        [layer.objective for layer in no_altmin.layers])


def test_alternating_minimization_after_a_baselines_selection_updates_gate_and_up(tiny):
    refit = prune_model(tiny, CALIBRATION, PruneSettings(method="magnitude", reconstruction=REFIT), batch_size=4)
    altmin = prune_model(tiny, CALIBRATION, PruneSettings(method="magnitude", reconstruction=REFIT_ALTMIN),
                         batch_size=4)
    gate = [layer.mlp.gate_proj.weight for layer in refit.model.model.layers]
    assert not torch.equal(gate[0], altmin.model.model.layers[0].mlp.gate_proj.weight)
    assert refit.layers[0].keep.tolist() == altmin.layers[0].keep.tolist()


def test_a_family_without_an_output_bias_gets_the_refit_without_one_and_is_told(tiny):
    loaded = loaded_family("qwen2", tiny.tokenizer)
    settings, notes = plan_run(loaded, PruneSettings(method="magnitude", reconstruction=REFIT), (32,))
    assert settings.reconstruction == Reconstruction(bias=False) and not settings.adds_output_bias
    assert notes and "without its down_proj bias" in notes[0]
    result = prune_model(loaded, CALIBRATION, settings, batch_size=4)
    assert all(layer.mlp.down_proj.bias is None for layer in result.model.model.layers)


def test_the_reconstruction_is_recorded_and_read_back():
    settings = PruneSettings(method="flap", sparsity=0.3, reconstruction=REFIT_ALTMIN)
    assert PruneSettings.from_dict(json.loads(json.dumps(asdict(settings)))) == settings
    assert PruneSettings.from_dict(asdict(PruneSettings(method="flap"))).reconstruction is None
    assert settings.for_method("wanda-sp").reconstruction == REFIT_ALTMIN


def test_the_cli_runs_a_baseline_with_spaps_refit_and_says_so(tiny_dir, text_files, capsys):
    args = ["prune", "--model", str(tiny_dir), "--device", "cpu", "--method", "wanda-sp", "--calib-file",
            str(text_files["calib"]), "--eval-file", str(text_files["eval"]), "--nsamples", "4", "--seqlen", "32",
            "--eval-len", "32", "--eval-windows", "2", "--json"]
    assert main([*args, "--reconstruction", "refit"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["reconstruction"] == "refit" and record["settings"]["reconstruction"]["altmin"] is False
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--reconstruction", "bogus"])
    assert exit_info.value.code == 2


def test_the_sweep_caption_says_what_every_point_does_after_its_selection():
    from spap_core.pipeline.parameters import describe
    from spap_service.analysis import weight_update_note

    assert "each baseline has its own rule" in weight_update_note(None)
    refit = weight_update_note(REFIT)
    assert "δ = 0.1 h̄ towards the dense weights, with a bias" in refit and "without alternating" in refit
    assert weight_update_note(REFIT_ALTMIN).endswith("and its default alternating minimization")
    assert "no bias" in weight_update_note(Reconstruction(bias=False))
    summary = describe(PruneSettings(method="flap", reconstruction=REFIT_ALTMIN, allocation="global"))
    assert "weight update refit+altmin" in summary and "global allocation" in summary
    assert "weight update" not in describe(PruneSettings())
