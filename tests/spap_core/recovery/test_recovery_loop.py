"""The recovery on tiny pruned models of three families (Llama, GPT-2's Conv1D, Phi-3's fused
projections): each mode lowers its training loss within a handful of steps, the merged model keeps
the pruned parameter count and reloads in plain transformers with the same logits, only the asked
projections change, a cancel leaves the weights bit for bit as they were, and the dense logits go to
disk above the threshold and are removed afterwards."""

from __future__ import annotations

import threading

import pytest
import torch
from family_models import CALIBRATION, EVALUATION, TOKENIZER, loaded_family, logits, parameters
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

import spap_core.recovery.distill as distill
from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.methods.registry import PruneSettings
from spap_core.models.shrink import save_pruned
from spap_core.pipeline.walk import prune_model
from spap_core.recovery.distill import dense_logits
from spap_core.recovery.loop import check_recoverable, recover
from spap_core.recovery.lora import adapted_modules
from spap_core.recovery.settings import DISTILL, LORA, LORA_DISTILL, MLP, RecoverySettings

STEPS = 6
FAMILIES = ("llama", "gpt2", "phi3")


def pruned(model_type: str):
    loaded = loaded_family(model_type)
    result = prune_model(loaded, CALIBRATION, PruneSettings(method="magnitude", sparsity=0.5), inplace=True)
    return loaded, result.model


def quick(mode: str, **changes) -> RecoverySettings:
    return RecoverySettings(**{"mode": mode, "steps": STEPS, "lr": 1e-2, "heldout_every": 3, **changes})


def weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_lora_lowers_the_loss_and_the_merged_model_reloads_in_plain_transformers(model_type, tmp_path):
    loaded, model = pruned(model_type)
    count, before = parameters(model), logits(model)
    seen = []
    result = recover(model, loaded.family, CALIBRATION, quick(LORA), seed=0, heldout=EVALUATION, on_step=seen.append)
    assert result.losses[-1] < result.losses[0] and result.steps == STEPS
    assert [step.step for step in seen] == list(range(1, STEPS + 1)) and {step.steps for step in seen} == {STEPS}
    assert [step.step for step in seen if step.heldout_ppl is not None] == [3, 6] == [s for s, _ in result.heldout]
    assert not any(isinstance(module, LoraLayer) for module in model.modules()) and not hasattr(model, "peft_config")
    assert parameters(model) == count and not torch.allclose(logits(model), before)
    save_pruned(model, TOKENIZER, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert parameters(reloaded) == count
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [DISTILL, LORA_DISTILL])
@pytest.mark.parametrize("model_type", ("llama", "phi3"))
def test_distillation_lowers_its_loss(model_type, mode):
    loaded = loaded_family(model_type)
    with dense_logits(loaded.model, CALIBRATION, batch_size=3) as teacher:
        torch.testing.assert_close(teacher.rows(torch.tensor([2, 0]), torch.device("cpu")),
                                   logits(loaded.model, CALIBRATION[[2, 0]]))
        model = prune_model(loaded, CALIBRATION, PruneSettings(method="magnitude", sparsity=0.5),
                            inplace=True).model
        # the random tiny model's distributions are nearly uniform, so the KL is small and a smaller step fits it
        result = recover(model, loaded.family, CALIBRATION, quick(mode, lr=1e-3), seed=0, teacher=teacher)
    assert result.losses[-1] < result.losses[0]


def test_only_the_asked_projections_change():
    loaded, model = pruned("gpt2")
    mlp_names = {name for name, module in model.named_modules()
                 if any(module is adapted for adapted in adapted_modules(model, loaded.family, MLP))}
    before = weights(model)
    recover(model, loaded.family, CALIBRATION, quick(LORA, targets=MLP), seed=0)
    changed = {name.rsplit(".", 1)[0] for name, tensor in model.state_dict().items()
               if not torch.equal(tensor, before[name])}
    assert changed and changed <= mlp_names
    assert {name.rsplit(".", 1)[0] for name in before if "attn" in name}.isdisjoint(changed)


def test_the_same_seed_gives_the_same_recovery():
    runs = []
    for _ in range(2):
        loaded, model = pruned("llama")
        runs.append(recover(model, loaded.family, CALIBRATION, quick(LORA), seed=3).losses)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("model_type", ("llama", "gpt2"))
def test_a_cancelled_recovery_leaves_the_weights_bit_identical(model_type):
    loaded, model = pruned(model_type)
    before = weights(model)
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    cancel = threading.Event()

    def cancel_at_third(step):
        if step.step == 3:
            cancel.set()

    with pytest.raises(PruningCancelled, match="after 3 of 6 steps.*as it was before recovery"):
        recover(model, loaded.family, CALIBRATION, quick(LORA), seed=0, on_step=cancel_at_third, cancel=cancel)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == trainable
    assert not any(isinstance(module, LoraLayer) for module in model.modules()) and not hasattr(model, "peft_config")


def test_dense_logits_go_to_disk_above_the_threshold_and_are_removed_after(monkeypatch):
    loaded = loaded_family("llama")
    with dense_logits(loaded.model, CALIBRATION, batch_size=4) as teacher:
        assert teacher.path is None  # 4 × 32 × 203 floats: in memory
    monkeypatch.setattr(distill, "DENSE_LOGITS_IN_MEMORY_BYTES", 1024)
    with dense_logits(loaded.model, CALIBRATION, batch_size=4) as teacher:
        assert teacher.path is not None and teacher.path.stat().st_size == CALIBRATION.numel() * 203 * 4
        torch.testing.assert_close(teacher.rows(torch.tensor([1, 3]), torch.device("cpu")),
                                   logits(loaded.model, CALIBRATION[[1, 3]]))
        folder = teacher.path.parent
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="inside"), dense_logits(loaded.model, CALIBRATION, 4) as teacher:
        folder = teacher.path.parent
        raise RuntimeError("inside")
    assert not folder.exists()


def test_a_recovery_without_calibration_text_or_on_an_offloaded_model_is_refused(monkeypatch):
    loaded = loaded_family("llama")
    with pytest.raises(SpapInputError, match="has none .* sampled from the model"):
        check_recoverable(loaded.model, RecoverySettings(mode=LORA), calibration_synthetic=True)
    check_recoverable(loaded.model, RecoverySettings(), calibration_synthetic=True)  # no recovery: nothing to refuse
    monkeypatch.setattr("spap_core.recovery.loop.is_dispatched", lambda model: True)
    with pytest.raises(SpapInputError, match="offloaded model"):
        check_recoverable(loaded.model, RecoverySettings(mode=DISTILL), calibration_synthetic=False)
