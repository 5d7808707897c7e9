"""SPAP Explorer: `streamlit run app.py`. The router only: the page list, the shared sidebar and
glossary, and a last line of defence so no page ever shows a Python traceback."""

import streamlit as st

st.set_page_config(page_title="SPAP Explorer", page_icon="✂️", layout="wide")

PAGES = {
    "Set up and run": [
        st.Page("pages/start_here.py", title="Start here", icon=":material/flag:", default=True),
        st.Page("pages/model_data.py", title="Model & data", icon=":material/memory:"),
        st.Page("pages/run_spap.py", title="Run SPAP", icon=":material/play_arrow:"),
    ],
    "Inspect the run": [
        st.Page("pages/mask_evolution.py", title="Mask evolution", icon=":material/animation:"),
        st.Page("pages/scores.py", title="Scores", icon=":material/bar_chart:"),
        st.Page("pages/dense_vs_pruned.py", title="Dense vs pruned text", icon=":material/chat:"),
        st.Page("pages/latency.py", title="Latency & memory", icon=":material/speed:"),
        st.Page("pages/zeroshot.py", title="Zero-shot accuracy", icon=":material/quiz:"),
    ],
    "Compare and understand": [
        st.Page("pages/perplexity_sweep.py", title="Perplexity vs sparsity", icon=":material/show_chart:"),
        st.Page("pages/compare_runs.py", title="Compare runs", icon=":material/compare_arrows:"),
        st.Page("pages/sensitivity.py", title="Sensitivity", icon=":material/tune:"),
        st.Page("pages/how_spap_works.py", title="How SPAP works", icon=":material/school:"),
    ],
}

page = st.navigation(PAGES)  # first, so the browser shows these pages while torch is still importing

from pages._errors import report_unexpected  # noqa: E402
from pages._routing import routed_page_run  # noqa: E402
from pages._saved_runs import open_shared_run  # noqa: E402  (imports torch)
from pages._sidebar import glossary_button, render_sidebar  # noqa: E402

try:
    open_shared_run()  # a ?run=NAME link: that saved run becomes this session's latest, on any page
    render_sidebar(page.title)
    glossary_button()
    with routed_page_run():
        page.run()
except Exception as exc:  # streamlit's own control flow (rerun, stop) is not an Exception
    report_unexpected(exc, f"page {page.title}")
