"""The session's model: which one it prunes (`model_choice`), where it runs, and the loaded copy that
st.cache_resource shares between all sessions, which no run mutates (runs prune copies of it)."""

from __future__ import annotations

import os

import streamlit as st
import torch

from pages._links import PAGE_MODEL_DATA
from pages._state import ModelChoice, session
from pages._text import plain
from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.models.device import resolve_device
from spap_core.models.loading import DEFAULT_MODEL, LoadedModel, load_model

MODEL_ENV = "SPAP_APP_MODEL"  # default model source (tests point it at a tiny local model)


def model_choice() -> ModelChoice:
    """The session's model choice: the app's default (SPAP_APP_MODEL, else the built-in one) until one is chosen."""
    state = session()
    if state.model is None:
        state.model = ModelChoice(source=os.environ.get(MODEL_ENV, DEFAULT_MODEL))
    return state.model


def target_device() -> torch.device:
    """Where the chosen model runs (known before it is loaded, so defaults can depend on it)."""
    try:
        return resolve_device(model_choice().device)
    except SpapInputError:
        return torch.device("cpu")


@st.cache_resource(max_entries=2, show_spinner="Loading the model (the first load of SmolLM2 dequantizes "
                                                "its GGUF, about 40 s; later loads take a second)…")
def _load_model_shared(source: str, device: str, dtype: str) -> LoadedModel:
    """One copy per (source, device, dtype) for the whole process; runs prune copies of it."""
    return load_model(source, device=device, dtype=dtype)


def current_model() -> LoadedModel | None:
    """The chosen model, or None after showing why it could not be loaded."""
    choice = model_choice()
    try:
        return _load_model_shared(choice.source, choice.device, choice.dtype)
    except (SpapInputError, SourceUnavailableError) as exc:
        st.error(f"Model '{plain(choice.source)}' could not be loaded: {plain(exc)}")
    return None


def require_model() -> LoadedModel:
    """The loaded model; otherwise point to the Model & data page and stop this page."""
    loaded = current_model()
    if loaded is None:
        st.page_link(PAGE_MODEL_DATA, label="Choose another model on Model & data", icon=":material/arrow_back:")
        st.stop()
    return loaded


def device_label(device: torch.device) -> str:
    """'GPU (its name)' or 'CPU (n threads)'."""
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return f"CPU ({torch.get_num_threads()} threads)"
