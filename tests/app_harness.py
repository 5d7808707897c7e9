"""Driving the Streamlit app through streamlit's AppTest: start a session, open pages, click,
await background jobs through the job queue itself (an event, not a timer; the bound on each wait
only turns a hang into a failure) and read the plotly figures a page drew. The `app_files` fixture
in conftest.py points the app at a tiny model and texts made of its vocabulary."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from conftest import word_text
from streamlit.testing.v1 import AppTest

from pages._text import WORD_JOINER
from spap_service.jobs import JobStatus, shared_queue

APP = Path(__file__).resolve().parents[1] / "app.py"
SCRIPT_TIMEOUT_S = 120
JOB_HANG_GUARD_S = 600


def shown(markdown: str) -> str:
    """The text a Markdown string shows where it quotes data through pages/_text.plain: escapes
    resolved, the invisible word joiners dropped."""
    return re.sub(r"\\(.)", r"\1", markdown).replace(WORD_JOINER, "")


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def start_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    at.run()
    assert_clean(at)
    return at


def open_page(at: AppTest, name: str) -> None:
    at.switch_page(f"pages/{name}.py")
    at.run()
    assert_clean(at)


def click(at: AppTest, label: str) -> None:
    next(button for button in at.button if button.label == label).click()
    at.run()


def keep(at: AppTest, key: str, value) -> None:
    """Set a value the session keeps (pages/_state.Stored) as a page would: in the server's registry
    of browser sessions, which outlives the page load, and in the page load's session state."""
    from spap_service.sessions import browser_sessions

    browser_sessions().state(at.session_state["browser_session_id"])[key] = value
    at.session_state[key] = value


def session_job(at: AppTest, kind: str):
    return at.session_state["jobs"][kind]


def finish_job(at: AppTest, kind: str) -> None:
    """Wait for this session's `kind` job on the queue, then redraw the page with its result."""
    job = session_job(at, kind)
    assert shared_queue().wait(job, JOB_HANG_GUARD_S), f"{job.label} hung"
    assert job.status is JobStatus.DONE, job.error
    at.run()
    assert_clean(at)


def run_spap(sparsity: float, iterations: int) -> AppTest:
    """A new session that has finished a SPAP run from the Run SPAP page."""
    at = start_app()
    open_page(at, "run_spap")
    at.slider(key="sparsity").set_value(sparsity)
    at.slider(key="K").set_value(iterations)
    click(at, "Run SPAP")
    assert_clean(at)
    finish_job(at, "run")
    return at


def outline(at: AppTest) -> list[tuple[str, str, Any]]:
    """The page's main area in the order it shows it, columns and expanders opened: (type, the
    label of the expander it sits in or "", element), so a test can check what comes first."""
    rows: list[tuple[str, str, Any]] = []

    def visit(node: Any, expander: str) -> None:
        for child in node.children.values():
            kind = getattr(child, "type", "")
            if kind == "plotly_chart" or not hasattr(child, "children"):
                rows.append((kind, expander, child))
            else:
                visit(child, child.label if kind == "expander" else expander)

    visit(at.main, "")
    return rows


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def array(value) -> np.ndarray:
    """A figure array from its JSON: a plain list, or plotly's typed array {dtype, bdata, shape}."""
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value)


def chart_title(figure: dict) -> str:
    """The title a chart is shown with (pages/_charts.py draws it above the chart, and keeps it in
    the figure's metadata), with its subtitle after a space."""
    meta = figure["layout"].get("meta", {})
    return " ".join(part for part in (meta.get("title", ""), meta.get("subtitle", "")) if part)


def titled(at: AppTest, start: str) -> dict:
    matches = [f for f in figures(at) if chart_title(f).startswith(start)]
    assert matches, f"no chart titled {start!r}"
    return matches[0]


def picture_first(at: AppTest) -> tuple[dict, str]:
    """The page opens with its chart (issue 34): before the first chart only the title, widgets and
    the chart's own title. Returns that chart's figure and the text under it (after any charts
    drawn beside it), the sentence that says in plain words what the picture shows."""
    rows = outline(at)
    first = next(index for index, (kind, _, _) in enumerate(rows) if kind == "plotly_chart")
    figure = json.loads(rows[first][2].proto.spec)

    def chart_heading(index: int) -> bool:  # a chart's title (and subtitle) drawn right above it
        following = next((row for row in rows[index:index + 3] if row[0] == "plotly_chart"), None)
        return following is not None and rows[index][0] in ("markdown", "caption") and \
            shown(rows[index][2].value).strip("* ") in chart_title(json.loads(following[2].proto.spec))

    for index, (kind, expander, _) in enumerate(rows[:first]):
        assert not expander, f"{kind} in the expander {expander!r} comes before the first chart"
        assert kind not in ("markdown", "caption") or chart_heading(index), f"text before the first chart: {kind}"
        assert kind not in ("latex", "dataframe", "table"), kind  # an alert about the page's state may come first
    index = first + 1
    while rows[index][0] == "plotly_chart" or chart_heading(index):  # charts beside the first one
        index += 1
    kind, expander, sentence = rows[index]
    assert kind == "markdown" and not expander, (kind, expander)
    return figure, sentence.value


def generate_greedily(at: AppTest, new_tokens: int) -> tuple[str, str]:
    """Dense vs pruned text, already open: both models answer one fixed prompt greedily with
    `new_tokens` tokens; returns their texts (dense, pruned)."""
    at.text_area(key="generation_prompt").set_value(word_text(6, seed=9))
    at.number_input(key="generation_max_new_tokens").set_value(new_tokens)
    at.number_input(key="generation_temperature").set_value(0.0)
    click(at, "Generate")
    assert_clean(at)
    dense, pruned = (text.value for text in at.text)
    return dense, pruned
