"""A model's config checked against its weights before any model is built. A config.json can lie
about its sizes (a million layers over two layers of weights, a width or vocabulary the tensors do
not have) or ask for custom code; transformers would then build for minutes, fill the gaps with
random weights, or print its load report and advise trust_remote_code. Here the safetensors
headers are read (names and shapes, no tensor data), the layer counts are compared with them
first, then the model is built on the meta device (no memory) and its parameters are compared
with the stored tensors, and a mismatch is refused in one line naming the first offending tensor."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from spap_core.errors import SpapInputError
from spap_core.models.adapters import SUPPORTED, text_config

SINGLE_FILE, SHARD_INDEX = "model.safetensors", "model.safetensors.index.json"  # what transformers loads
LAYER_COUNT = "num_hidden_layers"  # the standard field; a config class may call it otherwise (GPT-2: n_layer)
MAX_REASON_CHARS = 300  # some library messages list hundreds of model types


def one_line(exc: BaseException) -> str:
    """An exception's message as one line of reasonable length, for a refusal that quotes it
    (library messages run over several lines and some list every model type they know)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 1] + "…"


def folder_config(folder: Path) -> dict:
    """The folder's config.json as a dict, refused in one line when it is not a JSON object."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:  # not UTF-8, or not JSON
        raise SpapInputError(f"The config.json of {folder} cannot be read: {one_line(exc)}") from None
    if not isinstance(config, dict):
        raise SpapInputError(f"The config.json of {folder} holds a {type(config).__name__}, not a JSON object.")
    return config


def hub_config(repo_id: str) -> dict:
    """The config.json of a hub model (fetched alone, before any weight), refused in one line
    when it cannot be fetched or read."""
    try:
        return PretrainedConfig.get_config_dict(repo_id)[0]
    except Exception as exc:  # the hub client and transformers raise many types (not found, gated, not JSON)
        raise SpapInputError(f"Could not read the config of hub model {repo_id}: {one_line(exc)}") from None


def refuse_custom_code(config: dict, where: str) -> None:
    """Refuse a config whose model type transformers does not know: such a model (its config
    names auto_map) runs code from its own folder or repository, which this tool never does."""
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return  # a known type: transformers builds its own class (and ignores any auto_map)
    if "auto_map" in config:
        raise SpapInputError(f"The {where} needs custom code (its config names auto_map and model_type "
                             f"{model_type!r}), which this tool never runs; use a model of a supported family: "
                             f"{SUPPORTED}.")
    if model_type is not None:
        raise SpapInputError(f"The {where} has model_type {model_type!r}, which transformers does not know; use a "
                             f"model of a supported family: {SUPPORTED}.")


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every stored tensor's name and shape, read from the safetensors headers of the files
    transformers loads: model.safetensors, else the shards model.safetensors.index.json names."""
    if (folder / SINGLE_FILE).is_file():
        files = [folder / SINGLE_FILE]
    elif (folder / SHARD_INDEX).is_file():
        files = _shard_files(folder)
    else:
        raise SpapInputError(f"{folder} holds neither {SINGLE_FILE} nor {SHARD_INDEX}, the safetensors weights "
                             "transformers loads.")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as weights:
                for name in weights.keys():
                    shapes[name] = tuple(weights.get_slice(name).get_shape())
        except SafetensorError as exc:
            raise SpapInputError(f"The weights file {file} is truncated or corrupt: {one_line(exc)}") from None
    return shapes


def _shard_files(folder: Path) -> list[Path]:
    """The shard files the index maps tensors to, each a file of the folder itself."""
    index = folder / SHARD_INDEX
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not JSON, no weight_map, not a mapping
        raise SpapInputError(f"The shard index {index} cannot be read: {one_line(exc)}") from None
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or not (folder / name).is_file():
            raise SpapInputError(f"The shard index {index} names {str(name)[:80]!r}, which is not a file of {folder}.")
    return [folder / name for name in names]


def _numbered_groups(names: Iterable[str]) -> dict[str, set[int]]:
    """For every module list in the tensor names, the indices that occur: 'model.layers' → {0, 1}
    for 'model.layers.0.mlp.up_proj.weight' and 'model.layers.1.mlp.up_proj.weight'."""
    groups: dict[str, set[int]] = defaultdict(set)
    for name in names:
        parts = name.split(".")
        for position, part in enumerate(parts):
            if part.isascii() and part.isdigit():
                groups[".".join(parts[:position])].add(int(part))
    return groups


def _claimed_layer_counts(config: dict) -> list[tuple[str, object]]:
    """(field, value) of every layer count the config gives: its own, and those of the
    sub-configs it nests (a multimodal config holds its text model's), under the name their
    config class gives the field."""
    claimed = []
    for part in (config, *(value for value in config.values() if isinstance(value, dict))):
        model_type = part.get("model_type")
        fields = {LAYER_COUNT}
        if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
            fields.add(CONFIG_MAPPING[model_type].attribute_map.get(LAYER_COUNT, LAYER_COUNT))
        claimed += [(field, part[field]) for field in sorted(fields) if field in part]
    return claimed


def _layers(count: int) -> str:
    return f"{count} layer" if count == 1 else f"{count} layers"


def check_layer_counts(config: dict, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuse a layer count the weights cannot fill, from the raw config (before transformers
    reads it: some config classes make a list per layer): every layer holds weights, so no count
    may exceed the indices of the longest module list in the tensor names."""
    stored = max((len(indices) for indices in _numbered_groups(shapes).values()), default=0)
    for field, count in _claimed_layer_counts(config):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SpapInputError(f"The config of the {where} gives {field} = {str(count)[:40]}, not a number of "
                                 "layers.")
        if count > stored:
            raise SpapInputError(f"The config of the {where} says {_layers(count)} ({field}) but its weights hold "
                                 f"{stored}; the config does not describe these weights.")


def skeleton(location: str | Path, dtype: torch.dtype) -> PreTrainedModel:
    """The model its config describes with every parameter and buffer on the meta device: names
    and shapes, no memory and no arithmetic, so absurd widths cost nothing. Tied weights are tied."""
    config = AutoConfig.from_pretrained(location, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    model.tie_weights()
    return model


def check_weights_fit(model: PreTrainedModel, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuse, naming the first offending tensor, weights that do not fill `model` (its meta
    skeleton) as its config describes it: a layer (or other list entry) the config does not have,
    a tensor of another shape, or a parameter no tensor provides. Tensors may be named without
    the base model's prefix (a base model's checkpoint); a tied weight is provided by its twin.
    Missing parameters are only judged when every tensor has a place under the model's own
    names: a checkpoint in an older layout, which transformers renames while loading, is left to
    transformers there."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    known = parameters.keys() | {name for name, _ in model.named_buffers()}
    prefix = model.base_model_prefix
    bare = bool(prefix) and not any(name.startswith(prefix + ".") for name in shapes)
    stored = {name if name in known or not bare else f"{prefix}.{name}": shape for name, shape in shapes.items()}
    layer_count = getattr(text_config(model), LAYER_COUNT, None)
    built_groups, stored_groups = _numbered_groups(parameters), _numbered_groups(stored)
    for group, indices in built_groups.items():
        if extra := stored_groups.get(group, set()) - indices:
            decoder_layers = len(indices) == layer_count and not any(character.isdigit() for character in group)
            said = _layers(len(indices)) if decoder_layers else f"{len(indices)} entries in {group}"
            raise SpapInputError(f"The config of the {where} says {said} but its weights hold "
                                 f"{len(stored_groups[group])} ({group}.{min(extra)} is beyond the model the config "
                                 "describes); the config does not describe these weights.")
    for name, parameter in parameters.items():
        shape = stored.get(name)
        if shape is not None and shape != tuple(parameter.shape):
            raise SpapInputError(f"The config of the {where} does not match its weights: {name} is {list(shape)} in "
                                 f"the weights but {list(parameter.shape)} by the config.")
    if not stored.keys() <= known:
        return
    twins: dict[int, list[str]] = defaultdict(list)
    for name, parameter in parameters.items():
        twins[id(parameter)].append(name)
    ignored = [re.compile(pattern) for pattern in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    for name, parameter in parameters.items():
        if not any(twin in stored for twin in twins[id(parameter)]) and not any(p.search(name) for p in ignored):
            raise SpapInputError(f"The weights of the {where} lack {name} ({list(parameter.shape)}), which its "
                                 "config calls for; the config does not describe these weights.")


def checked_skeleton(folder: Path, dtype: torch.dtype, where: str) -> PreTrainedModel:
    """The meta skeleton of the local model in `folder` once its config passed every check
    against the weights beside it, in the order that keeps each step cheap: the config's own
    type, the layer counts against the tensor names, then the built skeleton against the shapes.
    Pre-quantized weights (a config with quantization_config) are packed in shapes of their own,
    which only transformers' quantizer maps onto the model, so their shapes are not compared."""
    config = folder_config(folder)
    refuse_custom_code(config, where)
    shapes = weight_shapes(folder)
    check_layer_counts(config, shapes, where)
    try:
        model = skeleton(folder, dtype)
    except Exception as exc:  # config classes and module constructors raise many types on values they cannot
        # take (a failed validation, a size that overflows, a zero head count)
        raise SpapInputError(f"The config of the {where} describes no causal LM transformers can build: "
                             f"{one_line(exc)}") from None
    if "quantization_config" not in config:
        check_weights_fit(model, shapes, where)
    return model
