"""Models bigger than the device: pruning a model that accelerate has dispatched over GPUs, CPU
memory and disk (`from_pretrained(device_map=...)`), one decoder layer at a time.

accelerate keeps an offloaded layer's weights in a `weights_map` (CPU tensors or files on disk)
and, through hooks, loads them onto the execution device only for the duration of a forward call.
The sequential walk needs more than a forward call: it reads the MLP's weights, replaces its
Linear layers by smaller ones and runs the layer again. So each layer is *materialised*: its
weights are loaded onto the execution device and its hooks removed; the walk prunes it as a plain
module; then its pruned weights are written back to an offload store of their own (files in the
offload folder, or CPU tensors) and one hook is attached that loads those, with the new shapes.
Peak device memory is one layer plus the calibration activations, not the model; the pruned model
evaluates and saves (`save_pretrained` reads offloaded weights back through the hooks) as usual.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import nn

from spap_core.errors import SpapInputError
from spap_core.models.device import resolve_device
from spap_core.system.access import read_limited, readable_file
from spap_core.system.memory import release_freed_memory

# Shorthands for --device-map besides a JSON file: accelerate's own strategies, and "disk"
# (every decoder layer offloaded to disk, the rest on the compute device: the low-memory mode).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
LAYERS_ON_DISK = "disk"
OFFLOADED = ("cpu", "disk")
# A device map: module names to GPU indices, 'cuda:N', 'cpu' or 'disk' (as accelerate names devices).
DeviceMap = dict[str, int | str]
T = TypeVar("T")


def _device_map(model: nn.Module) -> dict | None:
    """The device map accelerate placed the model with, None for a model it did not dispatch."""
    device_map = getattr(model, "hf_device_map", None)
    return device_map if isinstance(device_map, dict) else None


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed the model with a device map (hooks, possibly offloaded weights)."""
    return _device_map(model) is not None


def execution_device(model: nn.Module) -> torch.device:
    """The device forward passes start on: the first device of the map that is neither CPU nor
    disk (where accelerate runs offloaded layers), else the CPU; for a plain model, its device."""
    device_map = _device_map(model)
    if device_map is None:
        return next(model.parameters()).device
    devices = [device for device in device_map.values() if device not in OFFLOADED]
    return as_device(devices[0]) if devices else torch.device("cpu")


def as_device(device: int | str | torch.device) -> torch.device:
    """accelerate names a GPU by its index; torch wants 'cuda:N'."""
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def layers_on_disk_map(model: nn.Module, layers_name: str, device: torch.device) -> dict[str, str]:
    """The low-memory device map: every module on disk, each loaded onto `device` for its forward
    call: the decoder layers (the walk materialises one at a time), and the embeddings and head as
    well, which a small model's vocabulary makes as large as several layers (SmolLM2's tied 49k × 576
    embedding: 113 MiB resident through the whole walk otherwise, while the walk reads it once). The
    modules on the path to the layer list are split into their children, one entry per layer."""
    return {name: "disk" for name in _split_to_layers(model, "", str(device), layers_name)}


MAX_DEVICE_MAP_BYTES = 2**20


def read_device_map(spec: str) -> str | dict:
    """A strategy name, "disk", or the map in a JSON file ({"module name": device, ...}), read
    only once the file is known to lie inside the allowed roots and to be a small regular file.
    What the map says is checked against the model by check_device_map."""
    if spec in DEVICE_MAP_STRATEGIES or spec == LAYERS_ON_DISK:
        return spec
    if Path(spec).suffix != ".json":
        raise SpapInputError(f"--device-map '{spec[:80]}' is neither one of {', '.join(DEVICE_MAP_STRATEGIES)}, "
                             f"'{LAYERS_ON_DISK}', nor a .json file mapping module names to devices.")
    file = readable_file(spec, "device map", MAX_DEVICE_MAP_BYTES)
    try:
        device_map = json.loads(read_limited(file, MAX_DEVICE_MAP_BYTES).decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SpapInputError(f"The device map {file} is not a JSON file: {exc}.") from None
    if not isinstance(device_map, dict) or not all(isinstance(key, str) for key in device_map):
        raise SpapInputError(f"The device map {file} must be a JSON object from module names to devices.")
    return device_map


def _check_device(name: str, device: object) -> None:
    """A device as accelerate's maps name one: a GPU index, 'cuda', 'cuda:N', 'cpu' or 'disk';
    a GPU must exist here."""

    if device in OFFLOADED:
        return
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        resolve_device(f"cuda:{device}")
    elif isinstance(device, str) and device.split(":")[0] == "cuda":
        resolve_device(device)
    else:
        raise SpapInputError(f"The device map gives {_shown(name)} the device {json.dumps(device)[:40]}; a device is a "
                             "GPU index (0, 1, ...), 'cuda:N', 'cpu' or 'disk'.")


def check_device_map(device_map: dict, model: nn.Module, layers_name: str) -> DeviceMap:
    """The map as the layer-wise walk can follow it, or one line saying why not: every device is
    one accelerate takes and this machine has, every key names a module of the model ("" = the
    whole model), no key lies inside another, every weight is placed, and no decoder layer is
    split over devices (a layer is materialised whole on one
    device). A key that holds several decoder layers ("", "model", "model.layers") is split into
    its children down to the layers, each on the key's device."""
    modules = dict(model.named_modules())
    layers = modules[layers_name]
    layer_names = [f"{layers_name}.{index}" for index in range(len(layers))]
    if not device_map:
        raise SpapInputError('The device map is empty; name a device for every module ("" = the whole model).')
    for name, device in device_map.items():
        _check_device(name, device)
        if name not in modules:
            raise SpapInputError(f"The device map names '{name[:80]}', which is not a module of this model "
                                 f"(its top-level modules: {', '.join(n for n, _ in model.named_children())}).")
        inner = next((other for other in device_map if other != name and _contains(name, other)), None)
        if inner is not None:
            raise SpapInputError(f"The device map places both {_shown(name)} and '{inner}', which lies inside it; "
                                 "give each weight one device (entries must not contain one another).")
        for layer in layer_names:
            if _contains(layer, name) and name != layer:
                raise SpapInputError(f"The device map places '{name}' on its own, splitting decoder layer '{layer}'; "
                                     "the layer-wise walk needs each decoder layer whole on one device (or on disk).")
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})  # placed with the weight they are tied to
    unplaced = [name for name, _ in model.named_parameters()
                if name not in tied and not any(_contains(key, name) for key in device_map)]
    if unplaced:
        raise SpapInputError(f"The device map places no device for {', '.join(unplaced[:3])}"
                             f"{' and more' if len(unplaced) > 3 else ''}; it must cover every weight.")
    split: DeviceMap = {}
    for name, device in device_map.items():
        split.update(_split_to_layers(model, name, device, layers_name))
    return split


def _shown(name: str) -> str:
    return f"'{name[:80]}'" if name else '"" (the whole model)'


def _contains(outer: str, inner: str) -> bool:
    """Whether module (or weight) `inner` lies inside module `outer` ('' holds everything)."""
    return outer == "" or inner == outer or inner.startswith(outer + ".")


def _split_to_layers(model: nn.Module, name: str, device: int | str, layers_name: str) -> DeviceMap:
    """{name: device}, or, when `name` holds the decoder layers, its children's entries down to
    one entry per layer (accelerate then hooks each layer, which the walk materialises)."""
    if not _contains(name, layers_name):
        return {name: device}
    module = model.get_submodule(name)
    if name == layers_name:
        return {f"{name}.{index}": device for index in range(len(cast(nn.ModuleList, module)))}
    prefix = f"{name}." if name else ""
    entries: DeviceMap = {}
    for child, _ in module.named_children():
        entries.update(_split_to_layers(model, prefix + child, device, layers_name))
    return entries


def single_device(device_map: Mapping[str, int | str]) -> int | str | None:
    """The one device of a map that puts the whole model on one device other than disk (transformers
    then loads it without dispatching), else None."""
    devices = set(device_map.values())
    return next(iter(devices)) if len(devices) == 1 and "disk" not in devices else None


def parse_max_memory(spec: str) -> dict[int | str, str]:
    """'0=20GiB,cpu=30GiB' → {0: '20GiB', 'cpu': '30GiB'} (accelerate's max_memory)."""
    budget: dict[int | str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        device, sep, size = item.partition("=")
        if not sep or not size.strip():
            raise SpapInputError(f"--max-memory entries look like 0=20GiB or cpu=30GiB (got '{item[:40]}').")
        device = device.strip().removeprefix("cuda:")
        budget[int(device) if device.isdigit() else device] = size.strip()
    return budget


def move_to(values: T, device: torch.device) -> T:
    """A layer's arguments (rotary embeddings, masks; any nesting of tuples, lists and dicts) on
    the device the layer runs on."""
    from accelerate.utils import send_to_device

    return send_to_device(values, device)


def _hooked(module: nn.Module) -> list[nn.Module]:
    return [sub for sub in module.modules() if hasattr(sub, "_hf_hook")]


def _layer_device(layer: nn.Module, fallback: torch.device) -> torch.device:
    hook = getattr(layer, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is None:
        real = [t.device for t in layer.parameters() if t.device.type != "meta"]
        return real[0] if real else fallback
    return as_device(device)


class OffloadStore:
    """Where pruned offloaded layers are written: files in `folder` (accelerate's .dat format,
    read back one tensor at a time) when given, else CPU tensors. The files are removed with the
    layer, so a user's --offload-folder keeps only what accelerate itself put there."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def keep(self, layer_name: str, layer: nn.Module):
        from accelerate.utils import OffloadedWeightsLoader, offload_state_dict

        state = {name: tensor.detach().to("cpu") for name, tensor in layer.state_dict().items()}
        if self.folder is None:
            return OffloadedWeightsLoader(state_dict=state)
        target = Path(tempfile.mkdtemp(prefix=f"{layer_name}.pruned-", dir=self.folder))
        offload_state_dict(str(target), state)
        weakref.finalize(layer, shutil.rmtree, target, True)  # the files live as long as the layer
        return OffloadedWeightsLoader(save_folder=str(target))


@contextlib.contextmanager
def materialized(layer: nn.Module, layer_name: str, store: OffloadStore,
                 fallback: torch.device) -> Iterator[torch.device]:
    """The layer as a plain module on its execution device for the duration of the block, with
    accelerate's hooks removed; afterwards its (pruned) weights go back where they came from: to
    the offload store, behind one hook, if they were offloaded; else they stay, behind the layer's
    own input-alignment hook. Yields the device the layer runs on."""
    hooks = _hooked(layer)
    if not hooks:
        yield _layer_device(layer, fallback)
        release_freed_memory()
        return
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module, remove_hook_from_module
    from accelerate.utils import named_module_tensors, set_module_tensor_to_device

    device = _layer_device(layer, fallback)
    layer_hook = getattr(layer, "_hf_hook", None)
    offloaded = False
    for module in hooks:
        hook: Any = module._hf_hook  # accelerate's hook (accelerate ships no type information)
        if not getattr(hook, "offload", False):
            continue
        offloaded = True
        for name, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                            recurse=hook.place_submodules):
            set_module_tensor_to_device(module, name, device, value=hook.weights_map[name])
    remove_hook_from_module(layer, recurse=True)
    yield device
    skip_keys = getattr(layer_hook, "skip_keys", None)
    if offloaded:
        add_hook_to_module(layer, AlignDevicesHook(execution_device=device, offload=True,
                                                   weights_map=store.keep(layer_name, layer),
                                                   place_submodules=True, skip_keys=skip_keys))
    elif layer_hook is not None:
        add_hook_to_module(layer, layer_hook)
    release_freed_memory(collect_cycles=True)


def real_tensor(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """A module's parameter, read from its offload hook's weights map when it is offloaded (meta)."""
    tensor = getattr(module, name)
    if tensor.device.type != "meta":
        return tensor.detach()
    hook = getattr(module, "_hf_hook", None)
    if hook is None or getattr(hook, "weights_map", None) is None:
        raise SpapInputError("An offloaded weight has no hook to load it from; load the model again.")
    return hook.weights_map[name]


def max_layer_bytes(layers: nn.ModuleList) -> int:
    """The bytes of the largest decoder layer (parameters on the meta device count too)."""
    return max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)
