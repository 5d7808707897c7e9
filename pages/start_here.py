"""Start here: what SPAP is in three lines, a path through the app a class can follow, and the
50-minute lesson plan (docs/lesson.md) for the lecturer who prepares it."""

from pathlib import Path

import streamlit as st

from pages._estimates import preset_estimate_caption
from pages._model import current_model, device_label
from pages._requests import run_size_note
from pages._results import latest_outcome
from pages._routing import ensure_routed
from pages._text import plain
from spap_service.presets import CLASS_DEMO
from spap_service.uncertainty import perplexity_text

ensure_routed()

LESSON_PLAN = Path(__file__).resolve().parents[1] / "docs" / "lesson.md"

LESSON_PATH = [
    ("pages/how_spap_works.py", "How SPAP works", ":material/school:",
     "the penalty method on a toy layer of 8 channels, checked against the exact optimum (no model needed)."),
    ("pages/run_spap.py", "Run SPAP", ":material/play_arrow:",
     "prune the model's MLPs at the sparsity you choose, with live progress."),
    ("pages/mask_evolution.py", "Mask evolution", ":material/animation:",
     "how the soft mask s moves across the ρ iterations, and what ρ does to W."),
    ("pages/scores.py", "Scores", ":material/bar_chart:",
     "which channels each criterion would prune, and how far they agree."),
    ("pages/perplexity_sweep.py", "Perplexity vs sparsity", ":material/show_chart:",
     "SPAP against its baselines at several sparsities."),
    ("pages/dense_vs_pruned.py", "Dense vs pruned text", ":material/chat:",
     "the same prompt answered by the dense and the pruned model, side by side."),
]

st.title("SPAP Explorer")
st.markdown(
    "**SPAP** prunes whole channels of a language model's MLPs, layer by layer. For each layer it looks for the "
    "channels whose removal the remaining ones can best make up for, by solving a least-squares problem with a "
    "penalty that grows over a few iterations. The model that comes out is physically smaller and faster, and "
    "`transformers` loads it as it is."
)

st.subheader("A path through the app")
for number, (page, title, icon, what) in enumerate(LESSON_PATH, start=1):
    link_column, text_column = st.columns([1, 3], vertical_alignment="center")
    link_column.page_link(page, label=f"{number}. {title}", icon=icon)
    text_column.caption(what)
with st.expander("A 50-minute lesson plan: what to prepare, open, click, say and ask (docs/lesson.md)",
                 icon=":material/co_present:"):
    if LESSON_PLAN.is_file():
        st.markdown(LESSON_PLAN.read_text(encoding="utf-8"))
    else:
        st.caption(f"This installation has no lesson plan at {LESSON_PLAN}: it comes with the project's repository.")

st.subheader("Where things stand")
loaded = current_model()
if loaded is not None:
    st.caption(f"Model: {plain(loaded.description)}, on {device_label(loaded.device)}. Run size: {run_size_note()} "
               "Change the model or the texts on Model & data.")
st.caption(preset_estimate_caption(loaded, CLASS_DEMO) + f" It sets {', '.join(CLASS_DEMO.fields())} on Run SPAP.")
outcome = latest_outcome()
if outcome is None:
    st.caption("No run yet in this session: step 2 starts one.")
else:
    record = outcome.record
    st.caption(f"Latest run: {plain(record['method'])} at {record['sparsity']:.0%} sparsity, perplexity "
               f"{plain(perplexity_text(record['ppl_dense'], record.get('ppl_dense_ci95')))} → "
               f"{plain(perplexity_text(record['ppl'], record.get('ppl_ci95')))} (95% intervals).")
st.page_link("pages/model_data.py", label="Model & data", icon=":material/memory:")
