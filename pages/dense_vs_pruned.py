"""Dense vs pruned text: the dense model and the latest run's pruned model answer the same prompt
side by side, streamed token by token under the same sampling settings and seed, so what pruning
costs can be read rather than inferred from a perplexity.

Generation runs in the page's own script run rather than on the job queue: only the script run can
stream into the page, and a few hundred tokens take seconds, not minutes. A rerun (Stop, or any
other click) interrupts it; the text so far stays, because every step is kept in session state.
"""

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from pages._model import device_label, require_model
from pages._results import require_outcome, require_pruned_model
from pages._routing import ensure_routed
from pages._state import session
from pages._text import plain
from spap_core.errors import NumericalError, SpapInputError
from spap_core.evaluation.generate import (
    MAX_NEW_TOKENS,
    MAX_TEMPERATURE,
    GenerationSettings,
    SideBySide,
    TextStream,
    encode_prompt,
    generate_side_by_side,
    prompt_delivery,
    uses_chat_template,
)
from spap_core.models.loading import context_length
from spap_service.analysis import mlp_widths

ensure_routed()

DEFAULT_PROMPT = "Explain in a few sentences why the sky is blue."
CURSOR = " ▌"
SEED_LIMIT = 2**32 - 1  # the widget's bound (the library takes up to 2^63 - 1, more than a browser holds exactly)
STOP_REASONS = {"eos": "ended its answer", "length": "reached max new tokens", "cancelled": "was stopped",
                None: "was interrupted"}


def show_text(placeholder: DeltaGenerator, stream: TextStream) -> None:
    """The text exactly as decoded (no Markdown), with a cursor while the model is still writing."""
    placeholder.text(stream.text + ("" if stream.finished else CURSOR), width="stretch")


def stream_summary(stream: TextStream) -> str:
    return (f"{stream.tokens} tokens in {stream.seconds:.2f} s ({stream.tokens_per_s:.1f} tokens/s); "
            f"it {STOP_REASONS[stream.stop]}")


st.title("Dense vs pruned text")
loaded = require_model()
outcome = require_outcome()
require_pruned_model(loaded, outcome, "to let the pruned model write")

pruned_model = outcome.pruned_model()
removed = 1 - sum(mlp_widths(pruned_model, loaded.family)) / sum(mlp_widths(loaded.model, loaded.family))
delivery, reply = prompt_delivery(uses_chat_template(loaded.tokenizer))
st.caption(f"The dense model and the latest run's pruned model ({outcome.request.settings.method} at sparsity "
           f"{outcome.request.settings.sparsity:.0%}) {reply} the same prompt on {device_label(loaded.device)}, one "
           f"token each in turn; the prompt is {delivery}. Both use the same sampling settings, and each draws from "
           "its own random generator seeded alike: identical models would write identical text, so every difference "
           "comes from the pruning.")

with st.form("generation_settings", enter_to_submit=False):
    prompt = st.text_area("Prompt", DEFAULT_PROMPT, height=100, key="generation_prompt")
    columns = st.columns(4)
    max_new_tokens = columns[0].number_input("Max new tokens", 1, MAX_NEW_TOKENS, 128, key="generation_max_new_tokens")
    temperature = columns[1].number_input("Temperature (0 = greedy)", 0.0, MAX_TEMPERATURE, 0.7, step=0.1,
                                          key="generation_temperature")
    top_p = columns[2].number_input("Top-p", 0.0, 1.0, 0.9, step=0.05, key="generation_top_p")
    seed = columns[3].number_input("Seed", 0, SEED_LIMIT, 0, key="generation_seed")
    submitted = st.form_submit_button("Generate", type="primary", icon=":material/edit_note:")

request = None
if submitted:
    try:
        settings = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                      top_p=float(top_p), seed=int(seed))
        request = settings, encode_prompt(loaded.tokenizer, prompt, settings, context_length(loaded.model))
    except SpapInputError as exc:  # the previous pair stays on show below
        st.error(plain(exc), icon=":material/error:")

dense_column, pruned_column = st.columns(2)
with dense_column.container(border=True):
    st.markdown("**Dense model**")
    dense_text = st.empty()
with pruned_column.container(border=True):
    st.markdown(f"**Pruned model ({removed:.0%} of MLP channels removed)**")
    pruned_text = st.empty()

if request is not None:
    settings, encoded = request
    generation = {"prompt": prompt, "prompt_tokens": len(encoded.ids), "used_chat_template": encoded.used_chat_template,
                  "settings": settings, "run_finished_at": outcome.finished_at, "pair": None}
    session().generation = generation
    stop_button = st.empty()
    stop_button.button("Stop", icon=":material/stop_circle:", key="generation_stop")  # any rerun interrupts
    try:
        for snapshot in generate_side_by_side(loaded.model, pruned_model, loaded.tokenizer, encoded, settings):
            generation["pair"] = snapshot
            show_text(dense_text, snapshot.dense)
            show_text(pruned_text, snapshot.pruned)
    except NumericalError as exc:
        st.error(plain(exc), icon=":material/error:")
    stop_button.empty()

record = session().generation
if record is None or record["pair"] is None:
    st.info("Press Generate: both models write their answer here, side by side.")
    st.stop()
pair: SideBySide = record["pair"]
show_text(dense_text, pair.dense)
show_text(pruned_text, pair.pruned)
if record["run_finished_at"] != outcome.finished_at:
    st.caption("These texts come from an earlier run's pruned model; press Generate for the latest one.")
if record["prompt"] != prompt:
    st.caption(f"Generated for an earlier prompt: “{plain(record['prompt'])}”.")
st.caption(f"Dense: {stream_summary(pair.dense)}. Pruned: {stream_summary(pair.pruned)}. "
           f"The prompt ({record['prompt_tokens']} tokens) was {prompt_delivery(record['used_chat_template'])[0]}; "
           f"{record['settings'].describe()}. "
           "Tokens/s count each model's own forward passes, prompt included, timed in alternation on the same "
           "device during this generation.")
