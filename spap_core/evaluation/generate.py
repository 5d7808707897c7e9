"""Text from the dense and the pruned model side by side: the most direct way to see what pruning
costs. Both models decode the same prompt token by token with a KV cache, under the same sampling
settings and each with its own random generator seeded alike, so with identical models the texts
would be identical and every difference on screen comes from the pruning, not from the dice.

No streamlit here: the page streams the snapshots this module yields, and the tests call it directly.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from spap_core.errors import NumericalError, SpapInputError
from spap_core.evaluation.latency import cache_keyword
from spap_core.models.loading import context_length

MAX_NEW_TOKENS = 512
MIN_TEMPERATURE = 0.01  # below it sampling is greedy in all but name, and logits ÷ T can overflow
MAX_TEMPERATURE = 5.0  # above it every model's text is noise, which shows nothing about pruning
MAX_SEED = 2**63 - 1
INCOMPLETE_CHARACTER = "\ufffd"  # what decoding yields for the first bytes of a multi-byte character


def _is_whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GenerationSettings:
    """How both models sample. temperature 0 is greedy decoding (top_p and seed then play no part);
    otherwise the next token is drawn from softmax(logits / temperature) restricted to the smallest
    set of most likely tokens whose probability reaches top_p."""

    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if not _is_whole_number(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise SpapInputError(f"Max new tokens must be a whole number from 1 to {MAX_NEW_TOKENS} "
                                 f"(got {self.max_new_tokens!r}).")
        if not _is_real_number(self.temperature) or not (
                self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise SpapInputError(f"Temperature must be 0 (greedy) or from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g} "
                                 f"(got {self.temperature!r}).")
        if not _is_real_number(self.top_p) or not 0 < self.top_p <= 1:
            raise SpapInputError(f"Top-p must be above 0 and at most 1 (got {self.top_p!r}).")
        if not _is_whole_number(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise SpapInputError(f"The seed must be a whole number from 0 to 2^63 - 1 (got {self.seed!r}).")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def describe(self) -> str:
        """The settings in words, for captions."""
        if self.greedy:
            return f"greedy decoding (temperature 0), at most {self.max_new_tokens} new tokens"
        return (f"sampling at temperature {self.temperature:g} with top-p {self.top_p:g}, seed {self.seed}, "
                f"at most {self.max_new_tokens} new tokens")


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as the models see it: token ids, and whether the tokenizer's chat template wrapped it."""

    ids: tuple[int, ...]
    used_chat_template: bool


def _check_fits(prompt_tokens: int, settings: GenerationSettings, context: int | None) -> None:
    if context is not None and prompt_tokens + settings.max_new_tokens > context:
        raise SpapInputError(
            f"The prompt is {prompt_tokens} tokens, and with {settings.max_new_tokens} new tokens that exceeds the "
            f"model's context of {context} tokens: shorten the prompt or lower max new tokens.")


def uses_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a prompt reaches the models as a chat turn: exactly when the tokenizer has a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_delivery(used_chat_template: bool) -> tuple[str, str]:
    """How a prompt reached the models, and what they do with it, in words: a chat turn they
    answer, or plain text they continue."""
    if used_chat_template:
        return "wrapped in the tokenizer's chat template as a user turn", "answer"
    return "given as plain text (the tokenizer has no chat template)", "continue"


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, settings: GenerationSettings,
                  context: int | None) -> EncodedPrompt:
    """Token ids for a user prompt. An instruction-tuned model answers a prompt well only inside the
    chat format it was trained on, so its chat template (when the tokenizer has one) wraps the
    prompt as a user turn followed by the assistant's cue; the template writes the special tokens
    itself, so they are not added twice. A base model gets the prompt as plain text to continue."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise SpapInputError("The prompt is empty: write something for the models to answer or continue.")
    if uses_chat_template(tokenizer):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        used_chat_template = True
    else:
        ids = tokenizer(prompt).input_ids
        used_chat_template = False
    if not ids:
        raise SpapInputError("The prompt encodes to no tokens at all: write some words the tokenizer knows.")
    _check_fits(len(ids), settings, context)
    return EncodedPrompt(ids=tuple(ids), used_chat_template=used_chat_template)


@dataclass(frozen=True)
class TextStream:
    """One model's generation so far. `stop` is None while it goes on, then says why it ended:
    "eos" (the model ended its answer), "length" (max new tokens reached) or "cancelled"."""

    text: str
    token_ids: tuple[int, ...]
    seconds: float  # spent in this model's forward passes and sampling, prefill included
    stop: str | None = None

    @property
    def finished(self) -> bool:
        return self.stop is not None

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class SideBySide:
    dense: TextStream
    pruned: TextStream

    @property
    def finished(self) -> bool:
        return self.dense.finished and self.pruned.finished


def _eos_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every token that ends an answer: chat models often end a turn with a token other than the
    tokenizer's eos (listed in their generation config), so both sources count."""
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(value)
    return frozenset(ids)


def _next_token(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator, name: str) -> int:
    """Pick the next token from one position's logits. Sampling runs on the CPU with a CPU
    generator, so a seed gives the same draws whatever device each model is on."""
    logits = logits.float().cpu()
    if not torch.isfinite(logits).all():
        raise NumericalError(f"The {name} model produced non-finite logits; it cannot generate text.")
    if settings.greedy:
        return int(logits.argmax())
    probabilities = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p == 1:  # no cut: rounding in the cumulative sum could otherwise drop the tail
        return int(torch.multinomial(probabilities, 1, generator=generator))
    ranked, order = probabilities.sort(descending=True, stable=True)
    mass_above = ranked.cumsum(0) - ranked  # probability of the tokens ranked above each one
    ranked[mass_above >= settings.top_p] = 0  # the most likely token always stays
    return int(order[torch.multinomial(ranked, 1, generator=generator)])


class _Decoder:
    """One model's side of the generation: its KV cache, its random generator and its text so far.
    Only reads the model: the cache and every tensor belong to this decoder."""

    def __init__(self, name: str, model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: EncodedPrompt,
                 settings: GenerationSettings) -> None:
        self._name = name
        self._model = model
        self._tokenizer = tokenizer
        self._settings = settings
        self._device = next(model.parameters()).device
        self._prompt = torch.tensor([prompt.ids], dtype=torch.long, device=self._device)
        self.cache_keyword = cache_keyword(model)
        # only the last position's logits are needed: a long prompt's full logits would take gigabytes
        keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._last_logits_only = {"logits_to_keep": 1} if keeps_logits else {}
        self._eos = _eos_ids(model, tokenizer)
        self._generator = torch.Generator().manual_seed(settings.seed)
        self._cache = None
        self._ids: list[int] = []
        self._text = ""
        self._seconds = 0.0
        self._stop: str | None = None

    @property
    def finished(self) -> bool:
        return self._stop is not None

    @torch.inference_mode()
    def _forward_and_pick(self) -> int:
        """Prefill the prompt on the first call, then feed back the last token against the cache."""
        if self._cache is None:
            out = self._model(input_ids=self._prompt, use_cache=True, **self._last_logits_only)
        else:
            last = torch.tensor([[self._ids[-1]]], dtype=torch.long, device=self._device)
            out = self._model(input_ids=last, use_cache=True, **{self.cache_keyword: self._cache},
                              **self._last_logits_only)
        self._cache = getattr(out, self.cache_keyword)
        return _next_token(out.logits[0, -1], self._settings, self._generator, self._name)

    def step(self) -> None:
        started = time.perf_counter()
        token = self._forward_and_pick()  # reading the token's value waits for the device
        self._seconds += time.perf_counter() - started
        self._ids.append(token)
        if token in self._eos:
            self._stop = "eos"
        elif len(self._ids) >= self._settings.max_new_tokens:
            self._stop = "length"
        self._update_text()

    def _update_text(self) -> None:
        """Decode the whole answer again rather than token by token: a character of several bytes can
        span tokens, and a lone token of it decodes to a replacement character. While the text ends
        in one, the previous text stands until the character is complete."""
        # one sequence decodes to a str; transformers types decode's result as str | list[str]
        text: str = self._tokenizer.decode(self._ids, skip_special_tokens=True)  # type: ignore[assignment]
        if self.finished or not text.endswith(INCOMPLETE_CHARACTER):
            self._text = text

    def cancel(self) -> None:
        if not self.finished:
            self._stop = "cancelled"

    def snapshot(self) -> TextStream:
        return TextStream(text=self._text, token_ids=tuple(self._ids), seconds=self._seconds, stop=self._stop)


def generate_side_by_side(dense: nn.Module, pruned: nn.Module, tokenizer: PreTrainedTokenizerBase,
                          prompt: EncodedPrompt, settings: GenerationSettings,
                          cancel: threading.Event | None = None) -> Iterator[SideBySide]:
    """Decode `prompt` with both models in lockstep, one token each per step, and yield both texts
    after every step, so a UI can show them growing together; the last snapshot has both finished.
    Each model stops at its own end-of-sequence token or at max new tokens. Setting `cancel` stops
    both before their next token (the last snapshot then says "cancelled"). The models are only
    read: their weights, mode and configs stay as they were."""
    contexts = [length for length in (context_length(dense), context_length(pruned)) if length is not None]
    _check_fits(len(prompt.ids), settings, min(contexts, default=None))
    decoders = (_Decoder("dense", dense, tokenizer, prompt, settings),
                _Decoder("pruned", pruned, tokenizer, prompt, settings))
    while not all(decoder.finished for decoder in decoders):
        if cancel is not None and cancel.is_set():
            for decoder in decoders:
                decoder.cancel()
        else:
            for decoder in decoders:
                if not decoder.finished:
                    decoder.step()
        yield SideBySide(dense=decoders[0].snapshot(), pruned=decoders[1].snapshot())
