"""A pruned model kept beside its run record in little space: only what differs from the dense model
it was pruned from (the shrunk projections, a bias a method added), as safetensors, with the pruned
config (its shrunk widths) and a fingerprint of the dense model in the file's metadata. A tensor that
is the dense one with slices dropped along one dimension (the rows that feed the kept channels or
heads) is kept as the indices of the slices it keeps. The dense model the app has loaded anyway
supplies everything else, so a saved run brings its pruned model back for a fraction of a full
checkpoint's bytes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from spap_core.errors import SpapInputError
from spap_core.models.adapters import model_adapter
from spap_core.models.offload import is_dispatched
from spap_core.models.shrink import remove_padding

WEIGHTS_FILE = "pruned_weights.safetensors"
CONFIG_KEY, DENSE_KEY, SELECTIONS_KEY = "pruned_config", "dense_fingerprint", "selections"  # the file's metadata
SELECTION_PREFIX = "kept-slices:"  # a selected tensor's indices are stored under its name with this prefix
FINGERPRINT_SAMPLES = 16  # values read from each dense tensor: enough to tell two checkpoints apart


@dataclass(frozen=True)
class PrunedDifference:
    """What a pruned model adds to its dense model: the tensors that differ (by shape or value), those
    that are dense tensors with slices dropped (their dimension and the indices they keep), the
    pruned config and the dense model's fingerprint."""

    tensors: dict[str, torch.Tensor]
    selections: dict[str, tuple[int, torch.Tensor]]
    config: dict
    dense_fingerprint: str

    @property
    def bytes(self) -> int:
        """The tensors' and indices' bytes: what the file holds, but for its small header."""
        stored = [*self.tensors.values(), *(indices for _, indices in self.selections.values())]
        return sum(tensor.numel() * tensor.element_size() for tensor in stored)


def dense_fingerprint(model: PreTrainedModel) -> str:
    """A digest of the model's tensor names, shapes, dtypes and a strided sample of each tensor's
    values: equal for the same checkpoint loaded in the same precision, different for another
    checkpoint, even one of the same shapes. It reads only a few values of each tensor, so it costs
    nothing next to a forward pass."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
        sample = flat[::step][:FINGERPRINT_SAMPLES].to("cpu", torch.float64)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def pruned_difference(dense: PreTrainedModel, pruned: PreTrainedModel) -> PrunedDifference:
    """What `pruned` holds that `dense` does not hold as it is: a tensor that is a dense one with slices
    dropped, as the indices it keeps; any other changed or new tensor, as its values; with the pruned
    config and the dense model's fingerprint. Refused (SpapInputError) for offloaded models, whose
    tensors are not in memory to compare."""
    if is_dispatched(dense) or is_dispatched(pruned):
        raise SpapInputError("An offloaded model's pruned weights are not kept with its run (its layers are on disk, "
                             "not in memory to compare with the dense ones).")
    dense_state = dense.state_dict()
    tensors, selections = {}, {}
    for name, tensor in pruned.state_dict().items():
        original = dense_state.get(name)
        if original is not None and original.shape == tensor.shape and torch.equal(original, tensor.to(original)):
            continue
        selection = None if original is None else _selection(original, tensor)
        if selection is None:
            tensors[name] = tensor.detach().to("cpu").contiguous()
        else:
            selections[name] = selection
    return PrunedDifference(tensors, selections, pruned.config.to_dict(), dense_fingerprint(dense))


def _selection(dense: torch.Tensor, tensor: torch.Tensor) -> tuple[int, torch.Tensor] | None:
    """(dimension, indices) such that `dense.index_select(dimension, indices)` is `tensor` bit for
    bit, when `tensor` differs from `dense` in the length of one dimension only; else None."""
    if tensor.dtype != dense.dtype or tensor.dim() != dense.dim():
        return None
    shorter = [dim for dim in range(dense.dim()) if dense.shape[dim] != tensor.shape[dim]]
    if len(shorter) != 1:
        return None
    dim = shorter[0]
    where = {row: index for index, row in enumerate(_slices(dense, dim))}
    indices = [where.get(row) for row in _slices(tensor, dim)]
    if any(index is None for index in indices):
        return None
    return dim, torch.tensor(indices, dtype=torch.int64)


def _slices(tensor: torch.Tensor, dim: int) -> list[bytes]:
    """The bytes of each slice of `tensor` along `dim` (any dtype: its raw bytes are compared)."""
    rows = tensor.detach().to("cpu").movedim(dim, 0).contiguous()
    raw = rows.view(torch.uint8).reshape(rows.shape[0], -1).numpy()
    return [row.tobytes() for row in raw]


def write_pruned_weights(directory: str | Path, difference: PrunedDifference) -> Path:
    """Write the difference as WEIGHTS_FILE in `directory` (safetensors: tensors only, nothing a
    reader executes; the kept indices under SELECTION_PREFIX, their dimensions in the metadata); the
    caller writes it into a staged folder with the rest of the run."""
    path = Path(directory) / WEIGHTS_FILE
    # tied tensors (an embedding and its head) share storage, which safetensors refuses: each gets its own copy
    tensors = {name: tensor.clone() for name, tensor in difference.tensors.items()}
    tensors.update({SELECTION_PREFIX + name: indices for name, (_, indices) in difference.selections.items()})
    dims = {name: dim for name, (dim, _) in difference.selections.items()}
    save_file(tensors, str(path), metadata={CONFIG_KEY: json.dumps(difference.config), SELECTIONS_KEY: json.dumps(dims),
                                            DENSE_KEY: difference.dense_fingerprint})
    return path


def read_pruned_weights(file: str | Path, dense: PreTrainedModel) -> PreTrainedModel:
    """The pruned model rebuilt from `dense` and the tensors `write_pruned_weights` kept, with the
    pruned config, on the dense model's device and in its dtype; `dense` itself is left as it is.
    Refused (SpapInputError) when the file cannot be read or `dense` is not the model the run pruned."""
    path = Path(file)
    try:
        with safe_open(str(path), framework="pt") as weights:
            metadata = weights.metadata() or {}
        stored = load_file(str(path), device="cpu")
        config_dict = json.loads(metadata[CONFIG_KEY])
        fingerprint = metadata[DENSE_KEY]
        dims = json.loads(metadata[SELECTIONS_KEY])
        selections = {name: (int(dim), stored.pop(SELECTION_PREFIX + name)) for name, dim in dims.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as exc:
        raise SpapInputError(f"The run's pruned weights ({path.name}) cannot be read: "
                             f"{' '.join(str(exc).split())[:200]}") from None
    if fingerprint != dense_fingerprint(dense) or config_dict.get("model_type") != dense.config.model_type:
        raise SpapInputError("The run's pruned weights were made from another model (or the same one in another "
                             "precision) than the one loaded now; load the run's model on Model & data to bring "
                             "them back.")
    try:
        dense_state = dense.state_dict()
        stored.update({name: dense_state[name].index_select(dim, indices.to(dense_state[name].device))
                       for name, (dim, indices) in selections.items()})
    except (KeyError, IndexError, RuntimeError) as exc:  # a name the dense model lacks, an index beyond it
        raise SpapInputError(f"The run's pruned weights ({path.name}) do not fit the loaded model: "
                             f"{' '.join(str(exc).split())[:200]}") from None
    return _rebuilt(dense, type(dense.config).from_dict(config_dict), stored)


def _rebuilt(dense: PreTrainedModel, config, stored: dict[str, torch.Tensor]) -> PreTrainedModel:
    """The model `config` describes, built on the meta device (no initialisation), given uninitialised
    memory and its per-layer widths, then filled: the stored tensors, the dense model's for the rest,
    and the dense model's buffers (rotary frequencies, which no checkpoint holds)."""
    parameter = next(dense.parameters())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=parameter.dtype, trust_remote_code=False)
    model.to_empty(device=parameter.device)
    remove_padding(model, model_adapter(model))
    dense_state = dense.state_dict()
    if missing := [name for name in model.state_dict() if name not in stored and name not in dense_state]:
        raise SpapInputError(f"The run's pruned weights lack {missing[0]}, which neither they nor the loaded model "
                             "hold; the run's model differs from the one loaded now.")
    with torch.no_grad():
        dense_buffers = dict(dense.named_buffers())
        for name, buffer in model.named_buffers():
            if name in dense_buffers and dense_buffers[name].shape == buffer.shape:
                buffer.copy_(dense_buffers[name])
        model.load_state_dict({name: stored.get(name, dense_state.get(name)) for name in model.state_dict()})
    model.tie_weights()
    return model.eval()
