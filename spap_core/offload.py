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
import shutil
import weakref
import json
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from spap_core.errors import SpapInputError
from spap_core.memory import release_freed_memory

# Shorthands for --device-map besides a JSON file: accelerate's own strategies, and "disk"
# (every decoder layer offloaded to disk, the rest on the compute device: the low-memory mode).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
LAYERS_ON_DISK = "disk"
OFFLOADED = ("cpu", "disk")




def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed the model with a device map (hooks, possibly offloaded weights)."""
    return isinstance(getattr(model, "hf_device_map", None), dict)


def execution_device(model: nn.Module) -> torch.device:
    """The device forward passes start on: the first device of the map that is neither CPU nor
    disk (where accelerate runs offloaded layers), else the CPU; for a plain model, its device."""
    if not is_dispatched(model):
        return next(model.parameters()).device
    devices = [device for device in model.hf_device_map.values() if device not in OFFLOADED]
    return _as_device(devices[0]) if devices else torch.device("cpu")


def _as_device(device: int | str | torch.device) -> torch.device:
    """accelerate names a GPU by its index; torch wants 'cuda:N'."""
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def layers_on_disk_map(model: nn.Module, layers_name: str, device: torch.device) -> dict[str, str]:
    """The low-memory device map: every decoder layer on disk, every other module (embeddings,
    final norm, head; tied weights so stay together) on `device`. Modules on the path to the
    layer list are split into their children; accelerate wants the map to cover every weight."""
    device_map: dict[str, str] = {}

    def place(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if full == layers_name:
                device_map.update({f"{full}.{index}": "disk" for index in range(len(child))})
            elif layers_name.startswith(full + "."):
                place(full + ".", child)
            else:
                device_map[full] = str(device)

    place("", model)
    return device_map


def read_device_map(spec: str) -> str | dict:
    """A strategy name, "disk", or the map in a JSON file ({"module name": device, ...})."""
    if spec in DEVICE_MAP_STRATEGIES or spec == LAYERS_ON_DISK:
        return spec
    path = Path(spec).expanduser()
    if path.suffix != ".json":
        raise SpapInputError(f"--device-map '{spec[:80]}' is neither one of {', '.join(DEVICE_MAP_STRATEGIES)}, "
                             f"'{LAYERS_ON_DISK}', nor a .json file mapping module names to devices.")
    try:
        device_map = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpapInputError(f"Could not read the device map {path}: {exc}") from None
    if not isinstance(device_map, dict) or not all(isinstance(key, str) for key in device_map):
        raise SpapInputError(f"The device map {path} must be a JSON object from module names to devices.")
    return device_map


def check_device_map(device_map: dict, layer_names: list[str]) -> None:
    """Refuse maps the layer-wise walk cannot follow: a device that does not exist, or a decoder
    layer split over several devices (a layer is materialised whole on one device)."""
    from spap_core.models import resolve_device  # models imports this module

    for name, device in device_map.items():
        if device not in OFFLOADED:
            resolve_device(f"cuda:{device}" if isinstance(device, int) else str(device))
        for layer in layer_names:
            if name.startswith(layer + "."):
                raise SpapInputError(f"The device map places '{name}' on its own, splitting decoder layer '{layer}'; "
                                     "the layer-wise walk needs each decoder layer whole on one device (or on disk).")


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


def move_to(values: dict, device: torch.device) -> dict:
    """A layer's keyword arguments (rotary embeddings, masks) on the device the layer runs on."""
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
    return _as_device(device)


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
        hook = module._hf_hook
        if not getattr(hook, "offload", False):
            continue
        offloaded = True
        for name, _ in named_module_tensors(module, include_buffers=hook.offload_buffers, recurse=hook.place_submodules):
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


def real_weight(linear: nn.Linear) -> torch.Tensor:
    """A Linear's weight, read from its offload hook's weights map when it is offloaded (meta)."""
    if linear.weight.device.type != "meta":
        return linear.weight.detach()
    hook = getattr(linear, "_hf_hook", None)
    if hook is None or getattr(hook, "weights_map", None) is None:
        raise SpapInputError("An offloaded weight has no hook to load it from; load the model again.")
    return hook.weights_map["weight"]


def max_layer_bytes(layers: nn.ModuleList) -> int:
    """The bytes of the largest decoder layer (parameters on the meta device count too)."""
    return max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)
