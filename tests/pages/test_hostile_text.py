"""Text a user controls never renders as Markdown or HTML: link keys and values, a shared run's
name, an uploaded file's name (kept in the run's record, so everyone who opens the run sees it), a
model name and the fields of saved runs all reach the screen through pages/_text.py, and show as
typed. The AppTest part reads what every element would render; test_browser.py checks the same in
Chromium's DOM."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
from app_harness import APP, SCRIPT_TIMEOUT_S, click, finish_job, keep, open_page, shown
from streamlit.testing.v1 import AppTest

from pages._text import chart_text, plain
from spap_core.data.texts import TextSource
from spap_core.storage.weights import WEIGHTS_FILE
from spap_service.data import TextChoice

# What an attacker puts in a name: a link, an image that beacons, raw HTML, a code span to break out
# of, a bare address GitHub's Markdown would link by itself, Streamlit's own directives and maths.
PAYLOADS = ["[CLICKME](http://127.0.0.1:9/phish)", "![i](http://127.0.0.1:9/track.png)", "<img src=x onerror=alert(1)>",
            "<a href='http://127.0.0.1:9/h'>h</a>", "0.3`](http://127.0.0.1:9/q) [C", "www.example.com a@b.co",
            ":red[red] :material/home: $x^2$ **bold** # heading"]
HOSTILE = "HOSTILE[L](http://127.0.0.1:9/x) ![b](http://127.0.0.1:9/beacon.png) <b>B</b> `tick`"
# Fragments that must never reach a Markdown or chart string as they are.
RAW = ["](http", "![", "<b>", "`tick`", "http://", "www."]
PAGES = ["start_here", "model_data", "run_spap", "mask_evolution", "scores", "dense_vs_pruned", "latency",
         "zeroshot", "perplexity_sweep", "compare_runs", "sensitivity", "how_spap_works"]


@pytest.mark.parametrize("text", PAYLOADS + [HOSTILE, "line one\nline two", "back\\slash"])
def test_plain_shows_the_text_as_typed_with_every_markup_character_escaped(text):
    escaped = plain(text)
    assert shown(escaped) == " ".join(text.split())
    assert not re.search(r"(?<!\\)[\[\]()!<>`*_:$#@]", escaped.replace("\\\\", "")), escaped
    assert "http://" not in escaped and "www." not in escaped
    assert "<" not in chart_text(text) and ">" not in chart_text(text)


def rendered_strings(at: AppTest) -> list[str]:
    """Everything the session's elements render as Markdown (bodies, labels, help texts) or draw
    in a chart (the figure's JSON)."""
    strings = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "header", "subheader",
                 "latex"):
        strings += [element.value for element in at.get(kind)]
    for kind in ("expander", "tabs", "metric", "button", "checkbox", "toggle", "selectbox", "multiselect", "radio",
                 "slider", "number_input", "text_input", "text_area", "download_button", "page_link"):
        for element in at.get(kind):
            strings += [str(getattr(element.proto, field, "") or "") for field in ("label", "help", "body")]
    for table in at.get("table"):  # st.table renders its cells as Markdown
        strings += [str(cell) for cell in table.value.to_numpy().ravel()] + [str(name) for name in table.value.index]
    strings += [chart.proto.spec for chart in at.get("plotly_chart")]
    return strings


def assert_shown_verbatim(at: AppTest, marker: str = "HOSTILE") -> int:
    """No raw fragment of a payload anywhere the session renders; returns how many strings carry
    the marker (so a test can tell that its route was taken)."""
    carrying = [text for text in rendered_strings(at) if marker in text]
    for text in carrying:
        for fragment in RAW:
            assert fragment not in text, (fragment, text)
    return len(carrying)


def fresh_app(query: str = "") -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        at.query_params.setdefault(key, []).append(value)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_shared_run_link_naming_markdown_shows_it_as_typed(app_files):
    at = fresh_app(f"run={HOSTILE}")
    assert assert_shown_verbatim(at) == 1
    assert "which this server does not have" in at.warning[0].value


def test_link_keys_and_values_show_as_typed_and_repeats_are_named(app_files):
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    at.switch_page("pages/run_spap.py")
    at.query_params["sparsity"] = ["0.3`](http://127.0.0.1:9/q) [C HOSTILE"]
    at.query_params[HOSTILE] = ["1"]
    at.query_params["K"] = ["4", "6"]
    at.run()
    assert not at.exception
    warning = next(w.value for w in at.warning if "partly ignored" in w.value)
    assert assert_shown_verbatim(at) >= 1
    assert "K: given 2 times (4, 6)" in shown(warning)
    assert "not a setting of this page" in warning


def test_an_uploaded_name_a_model_name_and_saved_fields_show_as_typed_on_every_page(app_files, tmp_path):
    at = AppTest.from_file(str(APP), default_timeout=SCRIPT_TIMEOUT_S)
    at.run()
    open_page(at, "run_spap")
    upload = TextChoice.from_upload(TextSource(text=app_files["calibration"].read_text(),
                                               label=f"uploaded file {HOSTILE}.txt"))
    spec = at.session_state["data_spec"]
    keep(at, "data_spec", type(spec)(**{**spec.__dict__, "calibration": upload, "evaluation": upload}))
    at.run()
    assert assert_shown_verbatim(at) >= 1  # the form's caption names the data
    at.slider(key="K").set_value(2)
    click(at, "Run SPAP")
    finish_job(at, "run")
    outcome = at.session_state["latest_run"]
    assert HOSTILE in outcome.record["calib_source"]  # kept in the run's record as uploaded
    for page in PAGES:
        open_page(at, page)
        assert_shown_verbatim(at)

    # whoever opens the run's link later sees the same, and so does every field a saved record holds
    record_file = outcome.saved_to / "results.json"
    record = json.loads(record_file.read_text())
    record.update(model=HOSTILE, eval_source=HOSTILE, seed=HOSTILE, pruned_weights={"file": None, "why_not": HOSTILE})
    record_file.write_text(json.dumps(record))
    (outcome.saved_to / WEIGHTS_FILE).unlink()  # the record says why its weights were not kept
    later = fresh_app(f"run={quote(outcome.saved_to.name)}")
    for page in PAGES:
        later.switch_page(f"pages/{page}.py")
        later.run()
        assert not later.exception, [e.value for e in later.exception]
        assert_shown_verbatim(later)

    # a model name typed on Model & data is quoted in its refusal as typed
    open_page(at, "model_data")
    at.radio(key="model_kind").set_value("Hugging Face hub id").run()
    at.text_input(key="model_hub_id").set_value(f"a/{HOSTILE}").run()
    click(at, "Load model")
    assert assert_shown_verbatim(at) >= 1
