"""Text sources and the token windows cut from them.

Calibration = N random windows of L tokens (seeded). Evaluation = the first W non-overlapping
windows of L tokens of the text tokenized once (the protocol of the pruning literature).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.system.access import read_limited, readable_file
from spap_core.system.hub import hub_unreachable_reason, require_hub
from spap_core.system.memory import release_freed_memory

if TYPE_CHECKING:
    from transformers import GenerationMixin

DATA_DIR_ENV = "SPAP_DATA_DIR"
TEXT_FILE_ENVS = {"calibration": "SPAP_CALIB_FILE", "evaluation": "SPAP_EVAL_FILE"}
HUB_SPEC = "wikitext2"
WIKITEXT_FILES = {"calibration": "wikitext-2/wiki.valid.tokens", "evaluation": "wikitext-2/wiki.test.joined.txt"}
WIKITEXT_HUB_SPLITS = {"calibration": "train", "evaluation": "test"}
MAX_TEXT_BYTES = 64 * 1024 * 1024
SAMPLED_TEXT_TOKENS = 4096  # how much text the model writes when there is no real text


@dataclass(frozen=True)
class TextSource:
    """A text and a label saying where it came from (shown next to every result)."""

    text: str
    label: str
    synthetic: bool = False


def text_from_string(text: str, label: str = "uploaded text") -> TextSource:
    if not isinstance(text, str) or not text.strip():
        raise SpapInputError(f"The {label} is empty.")
    if "\x00" in text:
        raise SpapInputError(f"The {label} contains NUL bytes: it looks binary, not plain text.")
    return TextSource(text=text, label=label)


def decode_text_bytes(raw: bytes, label: str) -> TextSource:
    """Decode uploaded or read bytes as UTF-8 text, refusing binaries with a clear message."""
    if len(raw) > MAX_TEXT_BYTES:
        raise SpapInputError(f"The {label} is larger than the limit of {MAX_TEXT_BYTES // 2**20} MiB.")
    if b"\x00" in raw[:65536]:
        raise SpapInputError(f"The {label} contains NUL bytes: it looks binary, not plain text.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpapInputError(f"The {label} is not UTF-8 text (byte {exc.start} is invalid).") from exc
    return text_from_string(text, label)


def text_from_file(path: str | Path) -> TextSource:
    """A text file's text, refused with the true reason (outside the roots, missing, a folder, a
    FIFO or device, too big, binary, not UTF-8) and never read past the size limit."""
    file = readable_file(path, "text file", MAX_TEXT_BYTES)
    return decode_text_bytes(read_limited(file, MAX_TEXT_BYTES), f"file {file}")


def text_from_wikitext_hub(split: str) -> TextSource:
    """WikiText-2 raw from the hub, rows joined with blank lines as the literature evaluates it."""
    require_hub(f"WikiText-2 ({split})")
    import datasets

    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    except Exception as exc:  # datasets raises many connection/format errors
        raise SourceUnavailableError(f"Could not load WikiText-2 {split} from the hub: {exc}") from exc
    return TextSource(text="\n\n".join(rows), label=f"WikiText-2 raw {split} (hub)")


def text_sampled_from_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                            n_tokens: int, seed: int = 0) -> TextSource:
    """Data-free fallback: text the model writes itself, so pruning works with no corpus at all."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        prompt = torch.tensor([[start]], device=next(model.parameters()).device)
        generator = cast("GenerationMixin", model)  # every causal LM class of transformers generates
        chunks: list[str] = []
        while sum(len(c) for c in chunks) < n_tokens:
            out = generator.generate(prompt, do_sample=True, top_k=50, max_new_tokens=min(512, n_tokens),
                                     pad_token_id=tokenizer.eos_token_id)
            # one sequence decodes to a str; transformers types decode's result as str | list[str]
            chunks.append(tokenizer.decode(out[0, 1:], skip_special_tokens=True))  # type: ignore[arg-type]
    finally:
        torch.random.set_rng_state(generator_state)
    return TextSource(text="\n\n".join(chunks), label="model-generated text (no real data found)", synthetic=True)


def default_text_spec(purpose: str) -> str | None:
    """Where the default text of `purpose` comes from, in the one order the CLI, the app and the
    benchmarks share: a file named in $SPAP_CALIB_FILE / $SPAP_EVAL_FILE, then the WikiText-2 file
    under $SPAP_DATA_DIR (local, so runs are fast and reproducible), then WikiText-2 from the hub when
    it answers ('wikitext2'); None when there is none of these."""
    if purpose not in WIKITEXT_FILES:
        raise ValueError(f"purpose must be one of {sorted(WIKITEXT_FILES)}")
    if os.environ.get(TEXT_FILE_ENVS[purpose]):
        return os.environ[TEXT_FILE_ENVS[purpose]]
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir and (Path(data_dir) / WIKITEXT_FILES[purpose]).is_file():
        return str(Path(data_dir) / WIKITEXT_FILES[purpose])
    if hub_unreachable_reason() is None:
        return HUB_SPEC
    return None


def text_without_model(spec: str | None, purpose: str) -> TextSource | None:
    """The text a user's spec names, read before any model loads (a bad file is refused before
    the slow load); None when there is no real text and it must be sampled from the model.

    spec: a file path, 'wikitext2' / 'wikitext2:<split>' (hub), or None/'default': the default of
    `default_text_spec`.
    """
    if not spec or spec == "default":
        spec = default_text_spec(purpose)
    if spec is None:
        return None
    if spec.startswith(HUB_SPEC):
        split = spec.partition(":")[2] or WIKITEXT_HUB_SPLITS[purpose]
        return text_from_wikitext_hub(split)
    return text_from_file(spec)


def resolve_text(spec: str | None, purpose: str, model: PreTrainedModel | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None,
                 min_tokens: int = SAMPLED_TEXT_TOKENS) -> TextSource:
    """Turn a user's text spec into text: `text_without_model`, else (with a model) text sampled
    from the model, labelled as such."""
    source = text_without_model(spec, purpose)
    if source is not None:
        return source
    if model is None or tokenizer is None:
        raise SourceUnavailableError(
            f"No {purpose} text: the hub is unreachable and ${DATA_DIR_ENV} is not set; give a text file."
        )
    return text_sampled_from_model(model, tokenizer, min_tokens)


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """Token ids of the whole text as one 1-D tensor (no length warning: we cut windows ourselves)."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        ids = torch.tensor(tokenizer(text, return_attention_mask=False)["input_ids"], dtype=torch.long)
    finally:
        hf_logging.set_verbosity(verbosity)
    release_freed_memory()  # the encoding of a whole text held ~170 MiB for WikiText-2's test split
    return ids


def _check_window_request(count: int, seqlen: int, what: str) -> None:
    if not isinstance(count, int) or count < 1:
        raise SpapInputError(f"The number of {what} windows must be a positive integer (got {count!r}).")
    if not isinstance(seqlen, int) or seqlen < 8:
        raise SpapInputError(f"The window length must be at least 8 tokens (got {seqlen!r}).")


def calibration_windows(tokenizer: PreTrainedTokenizerBase, source: TextSource, nsamples: int,
                        seqlen: int, seed: int = 0) -> torch.Tensor:
    """N random windows of L tokens (seeded), shape [N, L]."""
    _check_window_request(nsamples, seqlen, "calibration")
    ids = tokenize(tokenizer, source.text)
    if ids.numel() < seqlen + 1:
        raise SpapInputError(
            f"The calibration text ({source.label}) has {ids.numel()} tokens; one window needs {seqlen + 1}. "
            "Give more text or a shorter window."
        )
    if nsamples * seqlen > ids.numel():
        raise SpapInputError(
            f"Calibration asks for {nsamples} × {seqlen} = {nsamples * seqlen} tokens but {source.label} "
            f"has only {ids.numel()}: lower the number of samples or the window length."
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=generator)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def evaluation_windows(tokenizer: PreTrainedTokenizerBase, source: TextSource, seqlen: int,
                       max_windows: int | None = None) -> torch.Tensor:
    """The first W non-overlapping windows of L tokens, shape [W, L] (all of them if W is None)."""
    _check_window_request(max_windows or 1, seqlen, "evaluation")
    ids = tokenize(tokenizer, source.text)
    available = ids.numel() // seqlen
    if available < 1:
        raise SpapInputError(
            f"The evaluation text ({source.label}) has {ids.numel()} tokens, less than one {seqlen}-token window."
        )
    if max_windows is not None and max_windows > available:
        raise SpapInputError(
            f"Evaluation asks for {max_windows} windows of {seqlen} tokens but {source.label} holds only {available}."
        )
    count = available if max_windows is None else max_windows
    return ids[: count * seqlen].view(count, seqlen)
