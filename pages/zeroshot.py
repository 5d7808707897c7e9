"""Zero-shot accuracy: the dense model and the latest run's pruned model on the same lm-eval tasks
(ARC, PIQA, HellaSwag, WinoGrande, BoolQ, or tasks of one's own in a local folder), the accuracy the
LLM-pruning papers report next to perplexity. The latest comparison's chart and a plain sentence open
the page, above the choices for the next one. Evaluated on the job queue and cached; the page says
before anything is pressed when the tasks cannot run here (the hub unreachable, no local tasks)."""

from functools import partial

import plotly.express as px
import streamlit as st

from pages._charts import show_chart
from pages._job_progress import job_panel
from pages._links import PAGE_RUN
from pages._model import require_model
from pages._palette import DENSE_AND_PRUNED
from pages._results import latest_outcome, latest_table, require_pruned_model
from pages._routing import ensure_routed
from pages._summaries import result_label
from pages._tables import request_table
from pages._text import chart_text, plain
from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.evaluation.zeroshot import STANDARD_TASKS
from spap_service.analysis import zeroshot_picture
from spap_service.limits import server_limits
from spap_service.zeroshot import available_tasks, compare_zeroshot, zeroshot_blocker, zeroshot_key

ensure_routed()

COLORS = DENSE_AND_PRUNED
LIMITS = (10, 25, 50, 100, 250, 500, 1000, None)  # examples per task; None: every example
DEMO_LIMITS = LIMITS[:5]

st.title("Zero-shot accuracy")
picture_slot = st.container()  # the latest comparison's chart and its sentence, above the choices for the next
st.caption("Multiple-choice tasks scored by lm-eval-harness with no examples in the prompt (zero-shot): the "
           "answer the model gives the highest log-likelihood is its pick; acc_norm divides each answer's "
           "log-likelihood by its length in characters. The pruning papers report these tasks next to "
           "perplexity.")
loaded = require_model()
outcome = latest_outcome()
demo = server_limits().public_demo

folder = None if demo else st.text_input(
    "Local task folder (optional)", key="zeroshot_folder", placeholder="a folder of lm-eval task YAML files",
    help="Tasks of your own: lm-eval task YAML files whose data files are local run without the Hugging Face hub.")
try:
    choices = available_tasks(folder)
except (SpapInputError, SourceUnavailableError) as exc:
    st.error(plain(exc), icon=":material/folder_off:")
    choices = list(STANDARD_TASKS)
local = [name for name in choices if name not in STANDARD_TASKS]
task_column, limit_column = st.columns([3, 1])
tasks = task_column.multiselect("Tasks", choices, default=local or list(STANDARD_TASKS),
                                help="The standard six download their data from the Hugging Face hub.")
limit = limit_column.select_slider("Examples per task", DEMO_LIMITS if demo else LIMITS, value=50,
                                   format_func=lambda n: "all" if n is None else str(n), key="zeroshot_limit",
                                   help="Each task's first examples; the papers use every example.")

blocker = zeroshot_blocker(tasks, folder) if tasks else "Choose at least one task."
if blocker is not None:
    st.warning(blocker, icon=":material/cloud_off:")
if outcome is None:
    st.info("No run yet in this session: the pruned model comes from a run on Run SPAP.")
    st.page_link(PAGE_RUN, label="Go to Run SPAP", icon=":material/play_arrow:")
    st.stop()
require_pruned_model(loaded, outcome, "to evaluate the pruned model")
st.caption(f"Dense model against the latest run's pruned model ({outcome.request.settings.method}, "
           f"{outcome.request.settings.sparsity:.0%} of MLP channels removed). Each example costs one forward "
           "pass per answer and per model.")
if st.button("Evaluate", type="primary", icon=":material/quiz:", disabled=blocker is not None):
    label = f"Zero-shot: {len(tasks)} task{'s' if len(tasks) > 1 else ''}, dense and pruned"
    request_table("zeroshot", zeroshot_key(loaded, outcome, tasks, limit, folder), label,
                  {"run_finished_at": outcome.finished_at, "run_label": result_label(outcome)},
                  partial(compare_zeroshot, loaded, outcome, tasks, limit, folder))

job_panel("zeroshot")
latest = latest_table("zeroshot")
if latest is None:
    picture_slot.info("Choose tasks below and press Evaluate: both models are evaluated on the job queue, one after "
                      "the other.")
    st.stop()
table, context = latest
bars = table.melt(id_vars=["task", "metric"], value_vars=["dense", "pruned"], var_name="model",
                  value_name="accuracy")
bars["task"] = bars["task"].map(chart_text)  # a local task's name is the user's
figure = px.bar(bars, x="task", y="accuracy", color="model", barmode="group", facet_col="metric",
                color_discrete_map=COLORS, title="Zero-shot accuracy: dense vs pruned")
figure.update_layout(height=400, margin=dict(t=60, b=10, l=10, r=10), yaxis_tickformat=".0%")
with picture_slot:
    show_chart(figure, subtitle=context.get("run_label", "the run these numbers were measured on"))
    st.markdown(plain(zeroshot_picture(table)))  # a local task's name is the user's
    if context["run_finished_at"] != outcome.finished_at:
        st.caption("These numbers belong to an earlier run; press Evaluate below to score the latest one.")
st.dataframe(table.style.format({"dense": "{:.1%}", "pruned": "{:.1%}", "change": "{:+.1%}"}), hide_index=True,
             width="stretch")
st.caption("change: pruned − dense, in accuracy points; n: examples per task (the mean row: over all tasks). "
           "With fewer than a few hundred examples a task's accuracy moves by several points from chance alone.")
