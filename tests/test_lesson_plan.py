"""docs/lesson.md, the 50-minute lesson: every page, preset and scenario it sends the lecturer to
exists under that name, and its steps fill the 50 minutes without a gap or an overlap."""

from __future__ import annotations

import re

from conftest import REPO

from spap_service.lesson import SCENARIOS
from spap_service.presets import CLASS_DEMO

LESSON = (REPO / "docs" / "lesson.md").read_text(encoding="utf-8")
STEP = re.compile(r"^## (\d+)–(\d+) min · (.+)$", re.MULTILINE)


def page_titles() -> set[str]:
    """The titles of app.py's navigation, as the sidebar shows them."""
    return set(re.findall(r'st\.Page\("pages/\w+\.py", title="([^"]+)"', (REPO / "app.py").read_text()))


def test_every_step_opens_a_page_of_the_app():
    steps = STEP.findall(LESSON)
    assert len(steps) >= 6
    assert {title for _, _, title in steps} <= page_titles()


def test_the_steps_fill_fifty_minutes_one_after_another():
    spans = [(int(start), int(end)) for start, end, _ in STEP.findall(LESSON)]
    assert spans[0][0] == 0 and spans[-1][1] == 50
    assert all(end == next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    assert all(start < end for start, end in spans)


def test_the_presets_and_scenarios_it_names_exist():
    presets = re.findall(r"\*\*([^*]+)\*\* preset", LESSON)
    scenarios = re.findall(r"\*\*([^*]+)\*\* scenario|Click \*\*([^*]+)\*\*", LESSON)
    assert presets and set(presets) <= {CLASS_DEMO.name}
    named = {first or second for first, second in scenarios}
    assert named and named <= {scenario.name for scenario in SCENARIOS}


def test_every_page_it_names_in_bold_exists():
    """A bold name that looks like a page title (Capitalised, known words) must be one."""
    titles = page_titles()
    bold = set(re.findall(r"\*\*([^*]+)\*\*", LESSON))
    meant_as_pages = {name for name in bold if name in titles or name.lower() in {t.lower() for t in titles}}
    assert meant_as_pages <= titles  # the same capitalisation as the sidebar
    assert {"Run SPAP", "Perplexity vs sparsity", "Latency & memory"} <= meant_as_pages


def test_every_button_and_label_it_names_is_on_screen():
    """The other bold names are what the lecturer clicks or reads (The maths, Glossary, Back to
    defaults, Share these results): each is a string of the app's pages."""
    titles = page_titles()
    named = {name for name in re.findall(r"\*\*([^*]+)\*\*", LESSON)
             if name not in titles and name != CLASS_DEMO.name and name not in {s.name for s in SCENARIOS}}
    source = "\n".join(path.read_text() for path in [REPO / "app.py", *sorted((REPO / "pages").glob("*.py"))])
    assert named and not [name for name in named if name not in source]


def test_start_here_opens_the_lesson_plan(app_files):
    from app_harness import start_app

    at = start_app()  # the default page: Start here
    (plan,) = [block for block in at.expander if "50-minute lesson plan" in block.label]
    assert any("## 0–5 min · Start here" in element.value for element in plan.markdown)
