"""Shared fixtures: a tiny random Llama with a word-level tokenizer (fast, offline), the shared
data folder (through $SPAP_DATA_DIR) and helpers that build layer problems from raw activations."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from spap_core.models.adapters import model_adapter
from spap_core.models.loading import LoadedModel
from spap_core.system import hub

REPO = Path(__file__).resolve().parents[1]
VOCAB_WORDS = [f"w{i}" for i in range(200)]


def shared_data_dir() -> Path:
    return Path(os.environ.get("SPAP_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "wikitext-2" / "wiki.test.joined.txt").is_file():
        pytest.fail(f"shared test data not found at {path}; set SPAP_DATA_DIR")
    return path


def word_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB_WORDS) for _ in range(n_words))


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(VOCAB_WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(VOCAB_WORDS) + 3, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def tiny() -> LoadedModel:
    model = tiny_llama()
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), source="tiny", description="tiny random Llama",
                       family=model_adapter(model))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny model saved as a local model directory (safetensors + tokenizer)."""
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_llama().save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_files(tmp_path_factory) -> dict[str, Path]:
    path = tmp_path_factory.mktemp("texts")
    files = {"calib": path / "calib.txt", "eval": path / "eval.txt", "short": path / "short.txt"}
    files["calib"].write_text(word_text(5000, seed=1))
    files["eval"].write_text(word_text(3000, seed=2))
    files["short"].write_text(word_text(20, seed=3))
    return files


@pytest.fixture()
def saved_run_data(text_files, tmp_path, monkeypatch):
    """Small data of the tiny texts (4 × 32 calibration tokens, 2 × 32 evaluation tokens) for runs of
    the service, whose saved runs go to this test's own results folder."""
    from spap_core.storage.runs import RESULTS_DIR_ENV
    from spap_service.data import DataSpec, TextChoice

    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    return DataSpec(calibration=TextChoice(kind="file", path=str(text_files["calib"])),
                    evaluation=TextChoice(kind="file", path=str(text_files["eval"])), nsamples=4, seqlen=32,
                    eval_windows=2, eval_len=32, batch_size=2)


@pytest.fixture(scope="module")
def app_files(tmp_path_factory):
    """A tiny model directory and calibration/evaluation texts, wired in through the app's
    environment variables for one test module (its own cache and results folders)."""
    folder = tmp_path_factory.mktemp("app")
    model_dir = folder / "tiny-llama"
    tiny_llama().save_pretrained(model_dir, safe_serialization=True)
    tiny_tokenizer().save_pretrained(model_dir)
    calibration, evaluation = folder / "calibration.txt", folder / "evaluation.txt"
    calibration.write_text(word_text(5000, seed=1))
    evaluation.write_text(word_text(3000, seed=2))
    patch = pytest.MonkeyPatch()
    patch.setenv("SPAP_APP_MODEL", str(model_dir))
    patch.setenv("SPAP_CALIB_FILE", str(calibration))
    patch.setenv("SPAP_EVAL_FILE", str(evaluation))
    patch.setenv("SPAP_CACHE_DIR", str(folder / "cache"))
    patch.setenv("SPAP_RESULTS_DIR", str(folder / "runs"))
    patch.setenv("HF_HUB_OFFLINE", "1")  # the hub check answers at once, and says "unreachable"
    yield {"model": model_dir, "calibration": calibration, "evaluation": evaluation}
    patch.undo()


@pytest.fixture()
def offline_hub(monkeypatch):
    """A hub endpoint that refuses connections at once (closed port on loopback)."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub, "_last_check", None)
    yield
    hub._last_check = None
