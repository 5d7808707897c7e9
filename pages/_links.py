"""Paths of the pages that other pages link to (st.page_link), so a link never names a page file twice."""

PAGE_MODEL_DATA = "pages/model_data.py"
PAGE_RUN = "pages/run_spap.py"
