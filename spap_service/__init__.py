"""The app's service layer: the runs, sweeps, scans and latency comparisons the pages start, the
job queue they run on, the interactive presets and the tables the charts are drawn from. It
imports spap_core and never streamlit, so the pages stay views and the tests call it directly."""
