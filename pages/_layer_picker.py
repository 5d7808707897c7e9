"""The layer slider of the pages that inspect one layer of a run."""

from __future__ import annotations

import streamlit as st


def layer_picker(n_layers: int, key: str, container=st) -> int:
    """A layer slider (a slider needs two values, so a one-layer model gets none)."""
    if n_layers == 1:
        container.caption("Layer 0 (the model has one layer)")
        return 0
    return container.slider("Layer", 0, n_layers - 1, 0, key=key)
