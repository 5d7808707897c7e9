"""Model & data: which model is pruned, where it runs and what it is made of (its parameter split
and MLP widths open the page, with a plain sentence about them); which texts calibrate and evaluate
it, and how many tokens of each."""

import os
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st
import torch

from pages._charts import show_chart
from pages._model import current_model, device_label, model_choice
from pages._requests import data_spec, run_size_note
from pages._routing import ensure_routed
from pages._state import ModelChoice, session
from pages._text import plain
from pages._widgets import bounded_number
from spap_core.data.texts import DATA_DIR_ENV, WIKITEXT_FILES, decode_text_bytes, text_from_file
from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.models.loading import DEFAULT_MODEL
from spap_core.pipeline.parameters import BY_KEY, DATA_PARAMETERS
from spap_core.system.hub import hub_unreachable_reason, require_hub
from spap_service.analysis import mlp_widths, parameter_picture, parameter_split
from spap_service.data import DataSpec, TextChoice

ensure_routed()

MODEL_KINDS = {"Built-in SmolLM2-135M": "builtin", "Local directory or .gguf file": "local",
               "Hugging Face hub id": "hub"}
TEXT_KINDS = {"Local text file": "file", "WikiText-2 from the hub": "hub", "Upload a .txt": "upload"}
DEVICES = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = ["auto", "float32", "bfloat16", "float16"]

st.title("Model & data")
hub_reason = hub_unreachable_reason()
if hub_reason is not None:
    st.warning(
        f"The Hugging Face hub is unreachable ({hub_reason}). Hub models and WikiText-2 from the hub cannot be "
        "fetched here: use the built-in SmolLM2 or a local model directory, and a local text file or an upload.",
        icon=":material/cloud_off:",
    )


def model_kind_of(source: str) -> str:
    if source == DEFAULT_MODEL:
        return "builtin"
    if source.startswith((".", "/", "~")):
        return "local"
    try:
        return "local" if Path(source).expanduser().exists() else "hub"
    except OSError:  # e.g. a name too long to look up: the loader says so when it is used
        return "local"


# ----------------------------------------------------------------- the model in one picture
loaded = current_model()
if loaded is not None:
    widths = mlp_widths(loaded.model, loaded.family)
    config = loaded.model.config
    split = parameter_split(loaded.model, loaded.family)
    total = sum(split.values())
    split_column, width_column = st.columns(2)
    with split_column:
        split_table = pd.DataFrame({"part": list(split), "parameters": list(split.values())})
        figure = px.pie(split_table, names="part", values="parameters", hole=0.45,
                        title="Parameter split")
        figure.update_layout(height=320, margin=dict(t=50, b=10, l=10, r=10))
        show_chart(figure)
    with width_column:
        figure = px.bar(x=list(range(len(widths))), y=widths, labels={"x": "layer", "y": "MLP channels"},
                        title=f"MLP width per layer ({loaded.family.model_type})")
        figure.update_layout(height=320, margin=dict(t=50, b=10, l=10, r=10))
        figure.update_xaxes(dtick=max(1, len(widths) // 10))
        show_chart(figure)
    st.markdown(parameter_picture(split, widths))
    st.markdown(f"**{plain(loaded.description)}** · runs on **{device_label(loaded.device)}** · "
                f"{next(loaded.model.parameters()).dtype}")
    st.caption(f"MLP of every layer: {loaded.family.kind}. Pruning removes intermediate channels: a row of each "
               "input projection and a column of the output projection. " + run_size_note())
    metric_columns = st.columns(4)
    metric_columns[0].metric("Decoder layers", len(widths))
    metric_columns[1].metric("MLP width", f"{min(widths)}" if len(set(widths)) == 1 else f"{min(widths)}–{max(widths)}")
    metric_columns[2].metric("Hidden size", getattr(config, "hidden_size", "?"))
    metric_columns[3].metric("Parameters", f"{total / 1e6:.1f} M")


# ------------------------------------------------------------------------------------ model
st.subheader("Model")
choice = model_choice()
with st.container(border=True):
    kind_labels = list(MODEL_KINDS)
    current_kind = model_kind_of(choice.source)
    kind_label = st.radio("Model source", kind_labels, horizontal=True, key="model_kind",
                          index=list(MODEL_KINDS.values()).index(current_kind))
    kind = MODEL_KINDS[kind_label]
    source = DEFAULT_MODEL
    if kind == "local":
        source = st.text_input("Model directory (config.json + *.safetensors) or .gguf file",
                               value=choice.source if current_kind == "local" else "", key="model_path")
    elif kind == "hub":
        source = st.text_input("Hub id (owner/name)", value=choice.source if current_kind == "hub" else "",
                               key="model_hub_id")
        if hub_reason is not None:
            st.caption("Hub models cannot be downloaded here (hub unreachable); a local directory works instead.")
    device_column, dtype_column = st.columns(2)
    device = device_column.selectbox("Device", DEVICES,
                                     index=DEVICES.index(choice.device) if choice.device in DEVICES else 0,
                                     help="auto = the GPU when torch sees one, else the CPU.", key="model_device")
    dtype = dtype_column.selectbox("Weights precision", DTYPES, index=DTYPES.index(choice.dtype), key="model_dtype",
                                   help="auto = float32 on the CPU, bfloat16 on GPUs that support it.")
    if st.button("Load model", icon=":material/download:", type="primary"):
        if not source.strip():
            st.error("Give a model directory, a .gguf file or a hub id first.")
        else:
            session().model = ModelChoice(source=source.strip(), device=device, dtype=dtype)
            st.rerun()  # the sidebar (drawn before this page) loads and shows the new model

# ------------------------------------------------------------------------------------- data
def text_source_inputs(purpose: str, current: TextChoice):
    """Inputs for one text (calibration or evaluation); returns a function that turns them into a
    validated TextChoice when the user applies them."""
    labels = list(TEXT_KINDS)
    kind_label = st.radio(f"{purpose.capitalize()} text", labels, key=f"{purpose}_kind",
                          index=list(TEXT_KINDS.values()).index(current.kind))
    kind = TEXT_KINDS[kind_label]
    suggested = Path(os.environ.get(DATA_DIR_ENV, "")) / WIKITEXT_FILES[purpose]
    if kind == "file":
        path = st.text_input("Path of a UTF-8 text file", key=f"{purpose}_path",
                             value=current.path if current.kind == "file" else "",
                             placeholder=str(suggested))
        return lambda: _checked_file(path)
    if kind == "hub":
        if hub_reason is not None:
            st.warning(f"Not available: the hub is unreachable. Use a local file such as `{suggested}` "
                       "or upload a .txt instead.")
        else:
            st.caption("WikiText-2 raw (train split for calibration, test split for evaluation), via `datasets`.")
        return lambda: _checked_hub()
    upload = st.file_uploader("Plain-text file (UTF-8)", type=["txt"], key=f"{purpose}_upload")
    if current.kind == "upload":
        st.caption(f"In use: {plain(current.path)}")
    return lambda: _checked_upload(upload, current)


def _checked_file(path: str) -> TextChoice:
    if not path.strip():
        raise SpapInputError("Give the path of a text file.")
    text_from_file(path.strip())  # refuses missing, binary or non-UTF-8 files with a clear message
    return TextChoice(kind="file", path=str(Path(path.strip()).expanduser()))


def _checked_hub() -> TextChoice:
    require_hub("WikiText-2")
    return TextChoice(kind="hub")


def _checked_upload(upload, current: TextChoice) -> TextChoice:
    if upload is not None:
        return TextChoice.from_upload(decode_text_bytes(upload.getvalue(), f"uploaded file {upload.name}"))
    if current.kind == "upload":
        return current
    raise SpapInputError("Choose a .txt file to upload first.")


st.subheader("Data")
spec = data_spec()
DATA = {declared.key: declared for declared in DATA_PARAMETERS}
with st.container(border=True):
    calibration_column, evaluation_column = st.columns(2)
    with calibration_column:
        make_calibration = text_source_inputs("calibration", spec.calibration)
        nsamples = bounded_number(BY_KEY["nsamples"], spec.nsamples, "data_nsamples",
                                  label="Calibration samples (random windows)")
        seqlen = bounded_number(BY_KEY["seqlen"], spec.seqlen, "data_seqlen", label="Tokens per calibration sample")
    with evaluation_column:
        make_evaluation = text_source_inputs("evaluation", spec.evaluation)
        eval_windows = bounded_number(DATA["eval_windows"], spec.eval_windows, "data_eval_windows")
        eval_len = bounded_number(DATA["eval_len"], spec.eval_len, "data_eval_len")
    batch_size = bounded_number(DATA["batch_size"], spec.batch_size, "data_batch_size")
    if st.button("Use this data", icon=":material/check:", type="primary"):
        try:
            spec = DataSpec(calibration=make_calibration(), evaluation=make_evaluation(), nsamples=int(nsamples),
                            seqlen=int(seqlen), eval_windows=int(eval_windows), eval_len=int(eval_len),
                            batch_size=int(batch_size))
        except (SpapInputError, SourceUnavailableError) as exc:
            st.error(plain(exc))
        else:
            session().data_spec = spec
            st.success("Data updated: the next run uses it.")

evaluation_budget = "the whole text" if spec.eval_windows == 0 else (
    f"{spec.eval_windows} × {spec.eval_len} = {spec.eval_windows * spec.eval_len:,} tokens")
st.table(pd.DataFrame({
    # st.table renders its cells as Markdown
    "source": [plain(spec.calibration.label or "(none)"), plain(spec.evaluation.label or "(none)")],
    "size": [f"{spec.nsamples} × {spec.seqlen} = {spec.nsamples * spec.seqlen:,} tokens (random windows)",
             f"{evaluation_budget} (first windows, in order)"],
}, index=["calibration", "evaluation"]))
if (spec.calibration.kind == "file" and not spec.calibration.path) or (
        spec.evaluation.kind == "file" and not spec.evaluation.path):
    st.info(f"No default text was found (${DATA_DIR_ENV} is unset and the hub is unreachable): give a text file "
            "path or upload a .txt above.")
st.caption("Token counts are checked when a run starts: if a text is too short for the windows asked for, the run "
           "stops at once and says by how much.")
