"""What only a CUDA machine can check: pruning, evaluation, saving and generation with the model on
the GPU, in its half precision, agree with the same work on the CPU. Skipped where no GPU is
visible (CI, the development machines); scripts/gpu_check.sh runs them on a GPU machine."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer
from transformers import AutoModelForCausalLM

from spap_core.evaluation.generate import GenerationSettings, encode_prompt, generate_side_by_side
from spap_core.methods.registry import PruneSettings
from spap_core.models.adapters import model_adapter
from spap_core.models.loading import LoadedModel
from spap_core.models.shrink import save_pruned
from spap_core.pipeline.experiment import run_experiment

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

CALIBRATION = torch.randint(3, 200, (8, 64), generator=torch.Generator().manual_seed(0))
EVALUATION = torch.randint(3, 200, (4, 64), generator=torch.Generator().manual_seed(1))


def loaded_on(device: str, dtype: torch.dtype) -> LoadedModel:
    model = tiny_llama().to(device=device, dtype=dtype)
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), source="tiny", description="tiny",
                       family=model_adapter(model))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_spap_on_the_gpu_matches_the_cpu_run(dtype, tmp_path):
    gpu = run_experiment(loaded_on("cuda", dtype), CALIBRATION.cuda(), EVALUATION.cuda(), PruneSettings(), batch_size=4)
    cpu = run_experiment(loaded_on("cpu", torch.float32), CALIBRATION, EVALUATION, PruneSettings(), batch_size=4)
    assert {p.device.type for p in gpu.result.model.parameters()} == {"cuda"}
    assert {p.dtype for p in gpu.result.model.parameters()} == {dtype}
    overlap = [len(set(a.keep.tolist()) & set(b.keep.tolist())) / len(a.keep)
               for a, b in zip(gpu.result.layers, cpu.result.layers)]
    assert min(overlap) > 0.9
    assert gpu.pruned.perplexity == pytest.approx(cpu.pruned.perplexity, rel=0.02 if dtype == torch.float32 else 0.05)
    save_pruned(gpu.result.model, tiny_tokenizer(), tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).to("cuda").eval()
    saved = gpu.result.model.state_dict()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in reloaded.state_dict().items())


def test_generation_side_by_side_on_the_gpu():
    dense = loaded_on("cuda", torch.bfloat16)
    pruned = run_experiment(dense, CALIBRATION.cuda(), EVALUATION.cuda(), PruneSettings(method="fasp"),
                            batch_size=4).result.model
    settings = GenerationSettings(max_new_tokens=8, temperature=0)
    prompt = encode_prompt(dense.tokenizer, "w1 w2 w3", settings, context=256)
    last = list(generate_side_by_side(dense.model, pruned, dense.tokenizer, prompt, settings))[-1]
    assert last.finished and last.dense.tokens and last.pruned.tokens


def test_layers_offloaded_to_cpu_and_disk_are_pruned_on_the_gpu_like_a_model_on_the_gpu(tmp_path):
    """The multi-place path of --device-map: layers resident on the GPU, offloaded to CPU memory and
    to disk, each pruned on the GPU, give the in-GPU-memory result and save loadable."""
    import json

    from spap_core.models.loading import Placement, load_model

    path = tmp_path / "tiny"
    tiny_llama().save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    device_map = {"model.embed_tokens": 0, "model.norm": 0, "model.rotary_emb": 0, "lm_head": 0,
                  "model.layers.0": "cpu", "model.layers.1": "disk"}
    (tmp_path / "map.json").write_text(json.dumps(device_map))
    placed = load_model(str(path), device="cuda", dtype="float32",
                        placement=Placement.parse(str(tmp_path / "map.json"), None, str(tmp_path / "offload")))
    offloaded = run_experiment(placed, CALIBRATION, EVALUATION, PruneSettings(), batch_size=4, inplace=True)
    in_memory = run_experiment(load_model(str(path), device="cuda", dtype="float32"), CALIBRATION, EVALUATION,
                               PruneSettings(), batch_size=4, inplace=True)
    assert offloaded.pruned.perplexity == pytest.approx(in_memory.pruned.perplexity, rel=1e-4)
    save_pruned(placed.model, placed.tokenizer, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert sum(p.numel() for p in reloaded.parameters()) == offloaded.result.params_after


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_recovery_trains_on_the_gpu_and_merges_in_the_models_precision(dtype, tmp_path):
    from spap_core.recovery.settings import RecoverySettings

    loaded = loaded_on("cuda", dtype)
    recovery = RecoverySettings(mode="lora+distill", steps=6, lr=1e-2, heldout_every=3)
    experiment = run_experiment(loaded, CALIBRATION, EVALUATION, PruneSettings(method="magnitude", sparsity=0.5),
                                batch_size=4, recovery=recovery)
    model = experiment.result.model
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cuda", dtype)}
    assert experiment.recovery is not None and experiment.recovery.steps == 6
    before = experiment.before_recovery
    assert before is not None and experiment.pruned.perplexity != before.perplexity
    save_pruned(model, tiny_tokenizer(), tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype).cuda()
    assert sum(p.numel() for p in reloaded.parameters()) == experiment.result.params_after
