"""Every bad input gives a clear error naming what to change, never a crash or a hang."""

import math
import re

import pytest
import tomllib
import torch
from conftest import REPO, tiny_tokenizer, word_text

from spap_core.data.texts import (
    MAX_TEXT_BYTES,
    calibration_windows,
    decode_text_bytes,
    evaluation_windows,
    resolve_text,
    text_from_file,
    text_from_string,
)
from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.registry import PruneSettings
from spap_core.methods.spap import PenaltySettings
from spap_core.models.loading import load_model
from spap_core.pipeline.walk import prune_model
from spap_core.problem.objective import RefitSettings, prune_count


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.2, 1.5, math.nan, math.inf])
def test_sparsity_outside_open_interval_is_refused(sparsity):
    with pytest.raises(SpapInputError, match="Sparsity"):
        PruneSettings(sparsity=sparsity)


@pytest.mark.parametrize("sparsity,width", [(0.001, 128), (0.999, 128)])
def test_sparsity_that_rounds_to_nothing_or_everything_is_refused(sparsity, width):
    with pytest.raises(SpapInputError, match="prunes"):
        prune_count(width, sparsity)


@pytest.mark.parametrize("kwargs,match", [
    ({"iterations": 0}, "K must"), ({"tau": 1.0}, "τ"), ({"tau": 0.5}, "τ"), ({"rho0": -1.0}, "ρ"),
    ({"rho0": 0.0}, "ρ"), ({"momentum": 0.0}, "α"), ({"momentum": 1.5}, "α"), ({"balance": -1.0}, "t must"),
    ({"rho0": math.nan}, "ρ"),
])
def test_bad_penalty_hyperparameters_are_refused(kwargs, match):
    with pytest.raises(SpapInputError, match=match):
        PenaltySettings(**kwargs)


@pytest.mark.parametrize("kwargs",
                         [{"ridge": -0.1}, {"ridge": math.nan}, {"prior": "median"}, {"precision": "float16"}])
def test_bad_refit_settings_are_refused(kwargs):
    with pytest.raises(SpapInputError):
        RefitSettings(**kwargs)


@pytest.mark.parametrize("kwargs", [{"rounds": -1}, {"steps": 0}, {"lr": 0.0}, {"batch_tokens": 0}])
def test_bad_alternating_minimization_settings_are_refused(kwargs):
    with pytest.raises(SpapInputError):
        AltMinSettings(**kwargs)


def test_unknown_method_is_refused():
    with pytest.raises(SpapInputError, match="Unknown method"):
        PruneSettings(method="random")


def test_sparsity_rounding_to_zero_channels_fails_before_any_work(tiny):
    with pytest.raises(SpapInputError, match="prunes 0"):
        prune_model(tiny, torch.randint(3, 200, (2, 16)), PruneSettings(sparsity=0.001))


def test_empty_binary_and_non_utf8_texts_are_refused(tmp_path):
    with pytest.raises(SpapInputError, match="empty"):
        text_from_string("   \n")
    with pytest.raises(SpapInputError, match="binary"):
        decode_text_bytes(b"PK\x03\x04\x00\x00binary", "upload")
    with pytest.raises(SpapInputError, match="not UTF-8"):
        decode_text_bytes("café".encode("latin-1"), "upload")
    with pytest.raises(SpapInputError, match="does not exist"):
        text_from_file(tmp_path / "missing.txt")


def test_an_upload_over_the_size_limit_is_refused_before_decoding():
    with pytest.raises(SpapInputError, match="larger than the limit of 64 MiB"):
        decode_text_bytes(b"a" * (MAX_TEXT_BYTES + 1), "uploaded file big.txt")
    # streamlit refuses larger uploads in the browser already, and keeps the ones it accepts in memory
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 10**6 <= MAX_TEXT_BYTES


def test_too_little_text_for_calibration_or_evaluation_is_refused():
    tokenizer = tiny_tokenizer()
    short = text_from_string(word_text(50))
    with pytest.raises(SpapInputError, match="one window needs"):
        calibration_windows(tokenizer, short, nsamples=1, seqlen=64)
    with pytest.raises(SpapInputError, match="lower the number of samples"):
        calibration_windows(tokenizer, text_from_string(word_text(300)), nsamples=10, seqlen=64)
    with pytest.raises(SpapInputError, match="less than one"):
        evaluation_windows(tokenizer, short, seqlen=64)
    with pytest.raises(SpapInputError, match="holds only"):
        evaluation_windows(tokenizer, text_from_string(word_text(300)), seqlen=64, max_windows=10)
    with pytest.raises(SpapInputError, match="at least 8"):
        calibration_windows(tokenizer, short, nsamples=1, seqlen=2)


def test_windows_are_seeded_and_evaluation_takes_the_first_windows():
    tokenizer = tiny_tokenizer()
    text = text_from_string(word_text(2000))
    a = calibration_windows(tokenizer, text, nsamples=4, seqlen=32, seed=1)
    b = calibration_windows(tokenizer, text, nsamples=4, seqlen=32, seed=1)
    c = calibration_windows(tokenizer, text, nsamples=4, seqlen=32, seed=2)
    assert a.shape == (4, 32) and torch.equal(a, b) and not torch.equal(a, c)
    ids = torch.tensor(tokenizer(text.text)["input_ids"])
    windows = evaluation_windows(tokenizer, text, seqlen=100, max_windows=3)
    assert torch.equal(windows.flatten(), ids[:300])
    assert evaluation_windows(tokenizer, text, seqlen=100).shape[0] == ids.numel() // 100


def test_unreachable_hub_fails_fast_with_a_clear_message(offline_hub):
    with pytest.raises(SourceUnavailableError, match="unreachable"):
        load_model("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(SourceUnavailableError, match="unreachable"):
        resolve_text("wikitext2", "evaluation")


def test_default_text_falls_back_to_data_dir_then_to_model_samples(offline_hub, monkeypatch, tmp_path, tiny):
    (tmp_path / "wikitext-2").mkdir()
    (tmp_path / "wikitext-2" / "wiki.valid.tokens").write_text(word_text(100))
    monkeypatch.setenv("SPAP_DATA_DIR", str(tmp_path))
    assert resolve_text(None, "calibration").label.endswith("wiki.valid.tokens")
    monkeypatch.delenv("SPAP_DATA_DIR")
    with pytest.raises(SourceUnavailableError, match="give a text file"):
        resolve_text(None, "calibration")
    sampled = resolve_text(None, "calibration", tiny.model, tiny.tokenizer, min_tokens=64)
    assert sampled.synthetic and "model-generated" in sampled.label and sampled.text.strip()


def test_paths_that_are_not_models_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SpapInputError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(SpapInputError, match="neither"):
        load_model(str(tmp_path / "notes.txt"))
    with pytest.raises(SpapInputError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(SpapInputError, match="No model"):
        load_model("  ")


def test_corrupt_gguf_and_pickle_only_dirs_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAP_CACHE_DIR", str(tmp_path / "cache"))
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(SpapInputError, match="is truncated or corrupt"):
        load_model(str(corrupt))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(SpapInputError, match="safetensors"):
        load_model(str(pickled))


def test_truncated_safetensors_is_refused(tiny_dir, tmp_path):
    import shutil

    broken = tmp_path / "truncated"
    shutil.copytree(tiny_dir, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SpapInputError, match=re.escape(f"The weights file {weights} is truncated or corrupt: ")):
        load_model(str(broken))


def tiny_gguf(path) -> bytes:
    """A small GGUF file written with the gguf package: one metadata string, two float tensors."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_string("general.name", "tiny-gguf-name")
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["header cut short", "tensor data cut short", "a string not UTF-8"])
def test_a_truncated_or_corrupt_gguf_is_said_so_in_one_line(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("SPAP_CACHE_DIR", str(tmp_path / "cache"))
    whole = tiny_gguf(tmp_path / "whole.gguf")
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes({"header cut short": whole[:60], "tensor data cut short": whole[:-40],
                         "a string not UTF-8": whole.replace(b"tiny-gguf-name", b"\xff" * 14)}[damage])
    with pytest.raises(SpapInputError) as refused:
        load_model(str(damaged))
    message = str(refused.value)
    assert message.startswith(f"The GGUF file {damaged} is truncated or corrupt: ") and "\n" not in message


def test_a_whole_gguf_transformers_cannot_use_is_not_called_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAP_CACHE_DIR", str(tmp_path / "cache"))
    tiny_gguf(tmp_path / "whole.gguf")  # no tokenizer in its metadata
    with pytest.raises(SpapInputError) as refused:
        load_model(str(tmp_path / "whole.gguf"))
    assert str(refused.value).startswith(f"Could not read GGUF file {tmp_path / 'whole.gguf'}: ")


def test_a_hub_model_that_needs_custom_code_is_refused_from_its_config_alone(monkeypatch):
    """Only config.json is fetched: neither the tokenizer nor the weights are asked for."""
    from transformers import AutoTokenizer, PretrainedConfig

    from spap_core.models import loading as models

    custom = {"model_type": "foo", "auto_map": {"AutoModelForCausalLM": "modeling_foo.FooForCausalLM"}}
    monkeypatch.setattr(models, "require_hub", lambda what: None)
    monkeypatch.setattr(PretrainedConfig, "get_config_dict", classmethod(lambda cls, name, **kwargs: (custom, {})))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("the tokenizer was fetched"))
    with pytest.raises(SpapInputError) as refused:
        load_model("someone/custom-model")
    assert str(refused.value).startswith("The hub model someone/custom-model needs custom code (its config names "
                                         "auto_map and model_type 'foo'), which this tool never runs")


def _special_text_path(kind: str, tmp_path):
    """A path that is no plain text file, made for the test."""
    import os

    if kind == "folder":
        (tmp_path / "a-folder").mkdir()
        return tmp_path / "a-folder"
    if kind == "fifo":
        os.mkfifo(tmp_path / "a-fifo")  # opening it for reading would block until a writer comes
        return tmp_path / "a-fifo"
    if kind == "device":
        return "/dev/zero"  # never ends
    if kind == "too big":
        with open(tmp_path / "big.txt", "wb") as handle:  # sparse: 65 MiB that take no disk
            handle.truncate(MAX_TEXT_BYTES + 2**20)
        return tmp_path / "big.txt"
    (tmp_path / "latin1.txt").write_bytes("café ".encode("latin-1") * 100)
    return tmp_path / "latin1.txt"


@pytest.mark.parametrize(("kind", "reason"), [
    ("folder", "is a folder, not a regular file"),
    ("fifo", "is a named pipe (FIFO), not a regular file"),
    ("device", "is a character device, not a regular file"),
    ("too big", "is 65 MiB; the limit is 64 MiB"),
    ("not utf-8", "is not UTF-8 text"),
])
@pytest.mark.parametrize("flag", ["--calib-file", "--eval-file"])
def test_a_text_file_is_checked_before_the_model_loads_with_the_true_reason(tiny_dir, text_files, tmp_path,
                                                                           monkeypatch, capsys, kind, reason, flag):
    import builtins

    import spap_core.cli as cli

    path = str(_special_text_path(kind, tmp_path))
    real_open = builtins.open

    def open_small_files_only(file, mode="r", *args, **kwargs):
        if str(file) == path and kind in ("fifo", "device", "too big", "folder"):
            raise AssertionError(f"{file} was opened")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_small_files_only)
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model loaded before the text was checked"))
    argv = ["prune", "--model", str(tiny_dir), "--calib-file", str(text_files["calib"]),
            "--eval-file", str(text_files["eval"]), flag, path]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and reason in err[0] and "does not exist" not in err[0], err
