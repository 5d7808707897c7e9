"""Presentation mode on a projector, in a real browser: a 1280 × 720 screen at 150% zoom is a
853 × 480 CSS-pixel viewport at device scale 1.5. After one run (so the result pages have charts),
every page opened from a link with `presentation=1` must show no word broken across two lines in a
heading, widget label, button, caption or paragraph, no formula split across lines, no text cut off
by its box, an open sidebar nowhere and no exception. A screenshot of each page is kept under
test-artifacts/presentation/ for a human to look at."""

from __future__ import annotations

import json

import test_browser
from conftest import REPO
from test_browser import JOB_GUARD_MS, NAV_TITLES, PROJECTOR, assert_no_errors, settle

# test_browser.py's fixtures (the tiny model's files, the served app, one Chromium) and its skip
# where Debian's chromium is missing.
files, server, browser = test_browser.files, test_browser.server, test_browser.browser
pytestmark = test_browser.pytestmark

SCREENSHOTS = REPO / "test-artifacts" / "presentation"
# Pages a lesson shows first: their first chart must start on the first screen, above the fold.
PICTURE_FIRST = {"mask_evolution", "scores", "perplexity_sweep", "how_spap_works"}
FIRST_CHART_TOP = """() => {
  const chart = document.querySelector('[data-testid="stMain"] [data-testid="stPlotlyChart"]');
  return chart ? chart.getBoundingClientRect().top + window.scrollY : null;
}"""
ZOOM = 1.5  # 1280 × 720 at 150%: PROJECTOR's CSS pixels

# Every text that must hold at the projector's size: headings, widget labels, buttons, captions and
# paragraphs of the main area and the header bar (the glossary's button).
TEXT_SELECTORS = ", ".join(f"{area} {element}" for area in ('[data-testid="stMain"]', '[data-testid="stHeader"]')
                           for element in ("h1", "h2", "h3", "h4", "h5", "h6", '[data-testid="stWidgetLabel"]',
                                           "button", '[data-testid="stCaptionContainer"]',
                                           '[data-testid="stMarkdownContainer"] p',
                                           '[data-testid="stMarkdownContainer"] li'))

# The problems of the page in words, [] when there are none. A word is a run of characters between
# spaces, hyphens, dashes and slashes (where a line may break); it is broken when the boxes of its
# characters lie on two lines. A formula (KaTeX) is split when its boxes do. Text is cut when a box
# that hides or scrolls its overflow is narrower than its content, and sticks out when it reaches past the
# column (or page) it stands in, over its neighbour.
PROJECTOR_CHECK = """(selectors) => {
  const problems = [];
  const lines = rects => {
    const tops = [...rects].filter(r => r.width > 0 && r.height > 0).map(r => r.top + r.height / 2);
    return tops.length ? Math.max(...tops) - Math.min(...tops) : 0;
  };
  const lineHeight = rects => Math.min(...[...rects].filter(r => r.height > 0).map(r => r.height));
  const boxes = [...document.querySelectorAll(selectors)];
  for (const box of boxes) {
    const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.parentElement.closest('.katex')) continue;
      for (const match of node.textContent.matchAll(/[^\\s\\-\\u2010-\\u2014\\/]+/g)) {
        const range = document.createRange();
        range.setStart(node, match.index);
        range.setEnd(node, match.index + match[0].length);
        const rects = range.getClientRects();
        if (rects.length > 1 && lines(rects) > lineHeight(rects) / 2)
          problems.push('broken word: ' + match[0]);
      }
    }
    for (const formula of box.querySelectorAll('.katex')) {
      const rects = formula.getClientRects();
      if (rects.length > 1 && lines(rects) > lineHeight(rects) / 2)
        problems.push('split formula: ' + formula.textContent.slice(0, 40));
    }
    for (const element of [box, ...box.querySelectorAll('*')]) {
      if (element.closest('.katex-mathml')) continue;  // KaTeX's copy for screen readers, hidden on purpose
      const style = getComputedStyle(element);
      const hides = style.overflowX !== 'visible' || style.textOverflow === 'ellipsis';  // or scrolls it
      const text = element.textContent.replace(/\\s+/g, ' ').trim().slice(0, 60);
      if (hides && element.scrollWidth > element.clientWidth + 1 && text)
        problems.push('cut text: ' + text);
      const column = element.closest('[data-testid="stColumn"], [data-testid="stMainBlockContainer"]');
      let inScrollingBox = false;  // then only that box counts
      for (let above = element.parentElement; above && above !== column; above = above.parentElement)
        inScrollingBox ||= getComputedStyle(above).overflowX !== 'visible';
      const content = document.createRange();
      content.selectNodeContents(element);
      const reach = Math.max(element.getBoundingClientRect().right, content.getBoundingClientRect().right);
      if (column && text && !inScrollingBox && reach > column.getBoundingClientRect().right + 1)
        problems.push('sticks out of its column: ' + text);
    }
  }
  return [...new Set(problems)];
}"""
SIDEBAR_OPEN = """() => {
  const sidebar = document.querySelector('[data-testid="stSidebar"]');
  if (!sidebar) return false;
  const box = sidebar.getBoundingClientRect();
  return sidebar.getAttribute('aria-expanded') === 'true' || sidebar.getAttribute('data-collapsed') === 'false'
    || (box.width > 0 && box.right > 0 && box.left < window.innerWidth);
}"""


def projector_page(browser):
    context = browser.new_context(viewport=PROJECTOR, device_scale_factor=ZOOM)
    page = context.new_page()
    page.set_default_timeout(120_000)
    return context, page


def test_the_projector_check_finds_broken_words_split_formulas_and_cut_text(browser):
    """The check itself: it names a word the browser must break in a narrow box, a label cut off
    by its box and a line reaching past its column, and passes the same texts where they fit."""
    context, page = projector_page(browser)
    try:
        page.set_content("""<main data-testid="stMain">
          <h3 style="width: 60px; overflow-wrap: anywhere">untouched momentum</h3>
          <div data-testid="stWidgetLabel" style="width: 40px; overflow: hidden; white-space: nowrap">Rounds of
            alternating minimization</div>
          <div data-testid="stColumn" style="width: 100px"><div data-testid="stMarkdownContainer">
            <p style="white-space: nowrap">a line too long for its column</p></div></div>
          <div data-testid="stMarkdownContainer"><p style="width: 600px">untouched momentum</p></div></main>""")
        assert sorted(page.evaluate(PROJECTOR_CHECK, TEXT_SELECTORS)) == [
            "broken word: momentum", "broken word: untouched", "cut text: Rounds of alternating minimization",
            "sticks out of its column: a line too long for its column"]
        page.set_content('<main data-testid="stMain"><h3 style="width: 600px">untouched momentum</h3></main>')
        assert page.evaluate(PROJECTOR_CHECK, TEXT_SELECTORS) == []
    finally:
        context.close()


def test_every_page_fits_a_projector_in_presentation_mode(server, browser):
    """1280 × 720 at 150% zoom, every page after a run and a sweep, opened from a presentation link:
    whole words, whole formulas, no cut text, the sidebar folded, no exception, and the first chart
    of the pages a lesson opens first within the first screen."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context, page = projector_page(browser)
    try:
        page.goto(f"{server}/run_spap?sparsity=0.3&K=5&presentation=1")
        settle(page)
        page.get_by_role("button", name="Run SPAP").click()
        page.get_by_text("Latest result: spap at 30%").wait_for(timeout=JOB_GUARD_MS)
        page.goto(f"{server}/perplexity_sweep?presentation=1")  # a sweep, so its page has its own chart
        settle(page)
        page.get_by_role("button", name="Run sweep").click()
        page.get_by_text("Perplexity vs sparsity (").first.wait_for(timeout=JOB_GUARD_MS)
        problems = {}
        for key, title in NAV_TITLES.items():
            page.goto(f"{server}/{'' if key == 'start_here' else key}?presentation=1")
            page.locator("h1").first.wait_for()
            settle(page)
            assert_no_errors(page)
            page.wait_for_function(f"!({SIDEBAR_OPEN})()", timeout=10_000)  # folded as the page opens
            assert page.get_by_role("button", name="Glossary").is_visible(), title
            if key in PICTURE_FIRST:
                page.locator('[data-testid="stMain"] [data-testid="stPlotlyChart"]').first.wait_for()
                top = page.evaluate(FIRST_CHART_TOP)
                if top >= PROJECTOR["height"]:
                    problems.setdefault(title, []).append(f"first chart starts at {top:.0f} px, below the first screen")
            height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
            page.set_viewport_size({"width": PROJECTOR["width"], "height": min(max(height, PROJECTOR["height"]), 8000)})
            page.wait_for_timeout(800)  # every element drawn at the final size
            problems.setdefault(title, []).extend(page.evaluate(PROJECTOR_CHECK, TEXT_SELECTORS))
            page.screenshot(path=str(SCREENSHOTS / f"{key}.png"))
            page.set_viewport_size(PROJECTOR)
        failing = {title: found for title, found in problems.items() if found}
        assert not failing, json.dumps(failing, indent=1, ensure_ascii=False)
    finally:
        context.close()

