"""Dense vs pruned text generation: the KV-cache loop against transformers' own greedy generate,
seeded sampling, top-p, stopping at EOS and at max new tokens, cancellation, incremental decoding
of multi-byte characters, the chat template, every refused setting and prompt, and the
"Dense vs pruned text" page through streamlit's AppTest after a real SPAP run.

The tiny random Llama of conftest is used with its matrices redrawn larger (`lively_llama`): at its
default initialisation every such model greedily repeats the prompt's last word, and a loop that
feeds the wrong positions or drops the cache would still match that.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from types import SimpleNamespace

import pytest
import torch
from app_harness import assert_clean, click, generate_greedily, keep, run_spap, shown, start_app
from conftest import tiny_llama, tiny_tokenizer, word_text
from streamlit.testing.v1 import AppTest
from torch import nn
from transformers import PretrainedConfig

from spap_core.errors import NumericalError, SpapInputError
from spap_core.evaluation.generate import (
    EncodedPrompt,
    GenerationSettings,
    SideBySide,
    encode_prompt,
    generate_side_by_side,
    prompt_delivery,
    uses_chat_template,
)
from spap_core.methods.registry import PruneSettings
from spap_core.models.adapters import model_adapter
from spap_core.models.loading import LoadedModel, context_length
from spap_core.pipeline.walk import prune_model

PROMPT = word_text(8, seed=5)
CALIBRATION = torch.randint(3, 203, (6, 32), generator=torch.Generator().manual_seed(0))
TEMPLATE = ("{% for message in messages %}[BOS] {{ message['content'] }}{% endfor %}"
            "{% if add_generation_prompt %} w0{% endif %}")


def lively_llama(seed: int = 0) -> nn.Module:
    """conftest's tiny Llama with every matrix redrawn at std 0.2, so its greedy text varies."""
    model = tiny_llama(seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def encoded(text: str = PROMPT) -> EncodedPrompt:
    return encode_prompt(tiny_tokenizer(), text, GenerationSettings(), context=256)


def run(dense: nn.Module, pruned: nn.Module, settings: GenerationSettings, prompt: EncodedPrompt | None = None,
        tokenizer=None, cancel: threading.Event | None = None) -> list[SideBySide]:
    return list(generate_side_by_side(dense, pruned, tokenizer or tiny_tokenizer(), prompt or encoded(), settings,
                                      cancel=cancel))


def greedy(max_new_tokens: int) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=max_new_tokens, temperature=0)


# ----------------------------------------------------------------------------------- library


def test_dense_and_pruned_models_both_write_text_step_by_step():
    dense = lively_llama()
    loaded = LoadedModel(model=dense, tokenizer=tiny_tokenizer(), source="tiny", description="tiny",
                         family=model_adapter(dense))
    pruned = prune_model(loaded, CALIBRATION, PruneSettings(method="magnitude", sparsity=0.3)).model
    assert pruned.model.layers[0].mlp.down_proj.in_features < dense.model.layers[0].mlp.down_proj.in_features
    steps = run(dense, pruned, GenerationSettings(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=3))
    final = steps[-1]
    assert final.finished and not any(step.finished for step in steps[:-1])
    for stream in (final.dense, final.pruned):
        assert stream.text.split() and all(word.startswith("w") for word in stream.text.split())
        assert 1 <= stream.tokens <= 12 and stream.seconds > 0 and stream.tokens_per_s > 0
    for before, after in zip(steps, steps[1:]):  # each step adds one token to each unfinished model
        for old, new in ((before.dense, after.dense), (before.pruned, after.pruned)):
            assert new.token_ids[:old.tokens] == old.token_ids
            assert new.tokens == old.tokens + (0 if old.finished else 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_decoding_matches_transformers_generate(seed):
    model = lively_llama(seed)
    prompt = encoded()
    expected = model.generate(torch.tensor([prompt.ids]), do_sample=False, max_new_tokens=24)[0, len(prompt.ids):]
    final = run(model, model, greedy(24), prompt)[-1]
    assert list(final.dense.token_ids) == expected.tolist()
    assert final.pruned.token_ids == final.dense.token_ids
    assert len(set(final.dense.token_ids)) > 4  # a text that varies, so the comparison means something


def test_identical_models_with_the_same_seed_write_the_same_sampled_text():
    dense, twin = lively_llama(), lively_llama()
    sampling = GenerationSettings(max_new_tokens=32, temperature=1.0, top_p=0.95, seed=7)
    final = run(dense, twin, sampling)[-1]
    assert final.dense.token_ids == final.pruned.token_ids and final.dense.text == final.pruned.text
    assert run(dense, twin, sampling)[-1].dense.token_ids == final.dense.token_ids  # reproducible
    reseeded = run(dense, twin, dataclasses.replace(sampling, seed=8))[-1]
    assert reseeded.dense.token_ids != final.dense.token_ids
    assert final.dense.token_ids != run(dense, twin, greedy(32))[-1].dense.token_ids  # it did sample


def test_the_lowest_temperature_samples_what_greedy_decoding_writes():
    model = lively_llama()
    coldest = run(model, model, GenerationSettings(max_new_tokens=16, temperature=0.01, top_p=1.0, seed=4))[-1]
    assert coldest.dense.token_ids == run(model, model, greedy(16))[-1].dense.token_ids


def test_a_tiny_top_p_keeps_only_the_most_likely_token():
    model = lively_llama()
    nucleus = run(model, model, GenerationSettings(max_new_tokens=16, temperature=1.5, top_p=1e-6, seed=1))[-1]
    assert nucleus.dense.token_ids == run(model, model, greedy(16))[-1].dense.token_ids


def test_each_model_stops_at_its_own_end_of_sequence_token():
    dense = lively_llama()
    expected = run(dense, dense, greedy(10))[-1].dense.token_ids
    ending = copy.deepcopy(dense)
    ending.generation_config.eos_token_id = expected[3]  # this copy ends its answer at that token
    first = expected.index(expected[3])
    final = run(dense, ending, greedy(10))[-1]
    assert final.dense.stop == "length" and final.dense.tokens == 10
    assert final.pruned.stop == "eos" and final.pruned.token_ids == expected[:first + 1]


def test_generation_leaves_both_models_as_they_were():
    dense, pruned = lively_llama(), lively_llama(1)
    pruned.train()
    before = [({k: v.clone() for k, v in m.state_dict().items()}, m.training, m.generation_config.to_dict(),
               m.config.to_dict()) for m in (dense, pruned)]
    run(dense, pruned, GenerationSettings(max_new_tokens=8, seed=2))
    for model, (weights, training, generation, config) in zip((dense, pruned), before):
        assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
        assert model.training is training and model.generation_config.to_dict() == generation
        assert model.config.to_dict() == config
        assert all(p.grad is None for p in model.parameters())


def test_cancel_stops_both_models_before_their_next_token():
    cancel = threading.Event()
    model = lively_llama()
    steps = []
    for step in generate_side_by_side(model, model, tiny_tokenizer(), encoded(), greedy(50), cancel=cancel):
        steps.append(step)
        if len(steps) == 2:
            cancel.set()
    assert len(steps) == 3
    assert steps[-1].dense.stop == steps[-1].pruned.stop == "cancelled"
    assert steps[-1].dense.tokens == steps[-1].pruned.tokens == 2


def test_non_finite_logits_are_reported_with_the_model_that_produced_them():
    dense, broken = lively_llama(), lively_llama()
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(NumericalError, match="The pruned model produced non-finite logits"):
        run(dense, broken, greedy(4))


class ByteTokenizer:
    """Token i is byte i: characters of several bytes span several tokens, as in byte-level BPE."""

    eos_token_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i != self.eos_token_id).decode("utf-8", errors="replace")


class ScriptedModel(nn.Module):
    """Writes a fixed token sequence whatever it is fed; its "cache" counts the steps."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.config = PretrainedConfig(max_position_embeddings=64)
        self.script = script
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids: torch.Tensor, cache: int | None = None, use_cache: bool = True) -> SimpleNamespace:
        step = 0 if cache is None else cache + 1
        logits = torch.full((1, input_ids.shape[1], 256), -1e4)
        logits[0, -1, self.script[step]] = 0.0
        return SimpleNamespace(logits=logits, cache=step)


def test_characters_split_across_tokens_never_show_as_garbage():
    script = list("é日本!".encode())  # 2 + 3 + 3 + 1 bytes
    model = ScriptedModel(script)
    steps = run(model, model, greedy(len(script)), EncodedPrompt(ids=(65,), used_chat_template=False),
                tokenizer=ByteTokenizer())
    texts = [step.dense.text for step in steps]
    assert texts == ["", "é", "é", "é", "é日", "é日", "é日", "é日本", "é日本!"]
    assert steps[-1].dense.stop == "length"


def test_the_chat_template_wraps_the_prompt_when_the_tokenizer_has_one():
    plain = tiny_tokenizer()
    chat = copy.deepcopy(plain)
    chat.chat_template = TEMPLATE
    settings = GenerationSettings()
    without = encode_prompt(plain, "w5 w6", settings, context=256)
    assert not without.used_chat_template and list(without.ids) == plain("w5 w6").input_ids
    wrapped = encode_prompt(chat, "w5 w6", settings, context=256)
    assert wrapped.used_chat_template
    # the words follow what is sent: a chat turn is answered, plain text continued
    assert (uses_chat_template(plain), uses_chat_template(chat)) == (False, True)
    assert prompt_delivery(uses_chat_template(chat)) == ("wrapped in the tokenizer's chat template as a user turn",
                                                         "answer")
    assert prompt_delivery(uses_chat_template(plain)) == ("given as plain text (the tokenizer has no chat template)",
                                                          "continue")
    assert list(wrapped.ids) == [plain.bos_token_id, *plain("w5 w6 w0").input_ids]
    assert run(lively_llama(), lively_llama(), greedy(3), wrapped)[-1].dense.tokens == 3


@pytest.mark.parametrize("settings, message", [
    ({"max_new_tokens": 0}, "Max new tokens must be a whole number from 1 to 512"),
    ({"max_new_tokens": 513}, "Max new tokens must be a whole number from 1 to 512"),
    ({"max_new_tokens": 8.0}, "Max new tokens must be a whole number"),
    ({"max_new_tokens": True}, "Max new tokens must be a whole number"),
    ({"temperature": -0.5}, "Temperature must be 0 (greedy) or from 0.01 to 5"),
    ({"temperature": 0.001}, "Temperature must be 0 (greedy) or from 0.01 to 5"),
    ({"temperature": 6.0}, "Temperature must be 0 (greedy) or from 0.01 to 5"),
    ({"temperature": float("nan")}, "Temperature must be 0 (greedy)"),
    ({"top_p": 0.0}, "Top-p must be above 0 and at most 1"),
    ({"top_p": 1.5}, "Top-p must be above 0 and at most 1"),
    ({"seed": -1}, "The seed must be a whole number from 0 to 2^63 - 1"),
    ({"seed": 2**63}, "The seed must be a whole number from 0 to 2^63 - 1"),
    ({"seed": 1.5}, "The seed must be a whole number"),
])
def test_bad_settings_are_refused_with_what_to_change(settings, message):
    with pytest.raises(SpapInputError) as refused:
        GenerationSettings(**settings)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


@pytest.mark.parametrize("prompt, message", [
    ("", "The prompt is empty"),
    ("  \n\t ", "The prompt is empty"),
    (word_text(250), "The prompt is 250 tokens, and with 10 new tokens that exceeds the model's context of 256 tokens"),
])
def test_bad_prompts_are_refused_with_what_to_change(prompt, message):
    model = tiny_llama()
    with pytest.raises(SpapInputError, match=message):
        encode_prompt(tiny_tokenizer(), prompt, greedy(10), context_length(model))


def test_a_prompt_that_fits_only_fewer_new_tokens_is_refused_at_generation_too():
    prompt = encode_prompt(tiny_tokenizer(), word_text(250), greedy(6), context=256)
    model = tiny_llama()
    with pytest.raises(SpapInputError, match="exceeds the model's context of 256 tokens"):
        run(model, model, greedy(7), prompt)


# ---------------------------------------------------------------------------------- the page
# (the same tiny-model wiring as tests/pages/test_app.py; the page must be listed in app.py's router)

PAGE = "pages/dense_vs_pruned.py"


@pytest.fixture(scope="module")
def ran_app(app_files) -> AppTest:
    """One session that has finished a SPAP run at 25 % sparsity."""
    return run_spap(0.25, 3)


def open_generation_page(at: AppTest) -> None:
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]


def session_with_run(ran_app: AppTest) -> AppTest:
    """A new session whose latest run is ran_app's, on the generation page with its default widgets."""
    at = start_app()
    keep(at, "latest_run", ran_app.session_state["latest_run"])
    open_generation_page(at)
    return at


def test_page_streams_dense_and_pruned_text_side_by_side(ran_app):
    at = ran_app
    open_generation_page(at)
    assert_clean(at)
    assert at.title[0].value == "Dense vs pruned text"
    assert any(m.value == "**Pruned model (25% of MLP channels removed)**" for m in at.markdown)
    intro = at.caption[0].value  # the tiny tokenizer has no chat template: the models continue plain text
    assert "continue the same prompt" in intro and "the prompt is given as plain text" in intro
    dense, pruned = generate_greedily(at, new_tokens=6)
    assert dense.split() and pruned.split() and "▌" not in dense + pruned
    assert "Stop" not in [button.label for button in at.button]  # offered only while the models write
    pair = at.session_state["dense_vs_pruned"]["pair"]
    assert pair.finished and (pair.dense.text, pair.pruned.text) == (dense, pruned)
    summary = at.caption[-1].value
    assert f"Dense: {pair.dense.tokens} tokens" in summary and f"Pruned: {pair.pruned.tokens} tokens" in summary
    assert summary.count("tokens/s") >= 2 and "plain text (the tokenizer has no chat template)" in summary
    assert "greedy decoding (temperature 0), at most 6 new tokens" in summary
    at.run()  # a rerun without Generate keeps the pair on show
    assert [text.value for text in at.text] == [dense, pruned]


@pytest.mark.parametrize("widget, value, message", [
    ("generation_top_p", 0.0, "Top-p must be above 0 and at most 1"),
    ("generation_temperature", 0.005, "Temperature must be 0 (greedy) or from 0.01 to 5"),
    ("generation_prompt", "   ", "The prompt is empty"),
])
def test_page_shows_bad_settings_as_a_message(ran_app, widget, value, message):
    at = session_with_run(ran_app)
    (at.text_area if widget == "generation_prompt" else at.number_input)(key=widget).set_value(value)
    click(at, "Generate")
    assert not at.exception
    assert [shown(e.value)[:len(message)] for e in at.error] == [message]


def test_page_says_the_models_answer_a_chat_turn_when_the_tokenizer_has_a_chat_template(ran_app, app_files):
    from pages._model import _load_model_shared

    tokenizer = _load_model_shared(str(app_files["model"]), "auto", "auto").tokenizer  # the page's loaded model
    tokenizer.chat_template = TEMPLATE
    try:
        at = session_with_run(ran_app)
        intro = at.caption[0].value
        assert "answer the same prompt" in intro and "wrapped in the tokenizer's chat template as a user turn" in intro
        at.text_area(key="generation_prompt").set_value(word_text(4, seed=3))
        at.number_input(key="generation_max_new_tokens").set_value(2)
        click(at, "Generate")
        assert_clean(at)
        assert "was wrapped in the tokenizer's chat template as a user turn" in at.caption[-1].value
    finally:
        tokenizer.chat_template = None


def test_page_without_a_run_points_to_run_spap(app_files):
    at = start_app()
    open_generation_page(at)
    assert any("No run yet" in info.value for info in at.info)
    assert not at.text


def test_page_refuses_a_run_of_another_model_and_a_run_without_weights(ran_app):
    outcome = ran_app.session_state["latest_run"]
    at = start_app()
    keep(at, "latest_run", dataclasses.replace(outcome, model_key="another model|cpu|torch.float32"))
    open_generation_page(at)
    assert any("pruned a different model" in w.value for w in at.warning) and not at.text
    # a run reloaded from a record saved before runs kept their weights: none in memory, on disk or in its folder
    record = {key: value for key, value in outcome.record.items() if key != "pruned_weights"}
    reloaded = dataclasses.replace(outcome, result=dataclasses.replace(outcome.result, model=None), spilled=None,
                                   stored_weights=None, record=record)
    keep(at, "latest_run", reloaded)
    at.run()
    assert any(shown(info.value).startswith("This run was saved without its pruned weights") for info in at.info)
    assert not at.text
