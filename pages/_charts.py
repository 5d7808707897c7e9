"""How every chart is shown, so that it holds on a projector (1280 × 720 at 150% zoom) as well as on
a wide screen. Plotly does not wrap a title: a long one is cut at the chart's edge, and the titles of
subplots side by side run into each other. So a chart's title (and its subtitle, the run it belongs
to) is drawn above it as text that wraps; subplot titles and axis titles are broken into short lines;
legends go under the plot, where they wrap; and presentation mode enlarges every font. The title
stays in the figure's metadata (`layout.meta.title`), where the tests read it."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import pandas as pd
import streamlit as st

from pages._state import session

# Fonts in presentation mode (px): readable from the back of a room.
PRESENTATION_FONT = 17
PRESENTATION_TICKS = 15
NORMAL_FONT = 13
# Line lengths of subplot and axis titles: three charts side by side on a 1280 px screen at 150% zoom
# (about 200 px each) hold 22 characters of 13 px type, 16 of presentation mode's 17 px.
LINE_CHARACTERS = {False: 22, True: 16}
# Presentation mode's page layout at 853 × 480 CSS pixels (1280 × 720 at 150% zoom), sidebar folded:
# large type; words break only at spaces (Streamlit's own rules break a word anywhere to fit a narrow
# column); a formula stays one block; columns too narrow for a label of the large type wrap onto a
# row of their own, as Streamlit does on a phone, and columns of text with formulas are stacked, each
# the page's full width; the page's margins and its title shrink to give the charts the room.
PRESENTATION_CSS = """<style>
  .stApp, .stMarkdown p, .stMarkdown li { font-size: 1.15rem !important; }
  [data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] p { font-size: 1.02rem !important; }
  [data-testid="stMetricValue"] { font-size: 2.1rem !important; }
  [data-testid="stMetricLabel"] p, [data-testid="stWidgetLabel"] p { font-size: 1.05rem !important; }
  [data-testid="stDataFrame"] { font-size: 1rem !important; }
  [data-testid="stMainBlockContainer"] { padding: 4rem 1.5rem 3rem !important; }
  .stApp h1 { font-size: 2.25rem !important; padding-top: 0.5rem !important; }
  [data-testid="stHorizontalBlock"] { flex-wrap: wrap !important; }
  [data-testid="stColumn"] { min-width: min(100%, 15rem) !important; }
  .stApp h1, .stApp h2, .stApp h3, .stApp h4, .stApp p, .stApp li, .stApp label, .stApp button,
  [data-testid="stWidgetLabel"], [data-testid="stWidgetLabel"] *, [data-testid="stMarkdownContainer"],
  [data-testid="stMarkdownContainer"] *, [data-testid="stCaptionContainer"] *, [data-testid="stTooltipContent"] * {
    overflow-wrap: normal !important; word-break: normal !important; hyphens: manual !important;
  }
  [data-testid="stHorizontalBlock"]:has(.katex) > [data-testid="stColumn"] { min-width: 100% !important; }
  .katex { display: inline-block; white-space: nowrap; }
</style>"""


def title_parts(title: str | None) -> tuple[str, str]:
    """A plotly title 'Main<br><sup>sub</sup>' as its main line and its subtitle, both plain text."""
    if not title:
        return "", ""
    match = re.search(r"<sup>(.*?)</sup>", title)
    subtitle = match.group(1) if match else ""
    main = re.sub(r"<sup>.*?</sup>", "", title)
    return " ".join(re.sub(r"<br\s*/?>", " ", main).split()), " ".join(subtitle.split())


def wrapped(text: str, width: int) -> str:
    """`text` broken into lines of about `width` characters at spaces (plotly takes <br>)."""
    return "<br>".join(textwrap.wrap(re.sub(r"<br\s*/?>", " ", text), width)) if len(text) > width else text


def show_chart(figure: Any, container: Any = st, subtitle: str | None = None) -> None:
    """Draw `figure` the one way every page does: its title and subtitle (`subtitle`, else its own
    <sup> part) as wrapping text above it, short lines for subplot and axis titles, the legend
    underneath, and the session's font size."""
    main, own_subtitle = title_parts(figure.layout.title.text)
    subtitle = subtitle if subtitle is not None else own_subtitle
    large = session().presentation
    line = LINE_CHARACTERS[large]
    figure.update_layout(title_text=None, meta={"title": main, "subtitle": subtitle})
    right_labels, top_lines = False, 0
    for annotation in figure.layout.annotations:  # make_subplots' titles, facet labels
        if not annotation.text or annotation.yref != "paper" or annotation.showarrow is not False:
            continue
        facet_row = annotation.textangle == 90  # outside the plot on the right
        title = annotation.y is not None and annotation.yanchor == "bottom"  # above its panel
        if facet_row or title:
            annotation.text = wrapped(annotation.text, line)
            right_labels |= facet_row
            if title and annotation.y >= 0.99:  # a top-row title, above the plot area
                top_lines = max(top_lines, annotation.text.count("<br>") + 1)
    x_lines = 0
    for axis in figure.select_xaxes():
        axis.title.text = wrapped(axis.title.text or "", line + 2)
        x_lines = max(x_lines, (axis.title.text or "").count("<br>") + 1 if axis.title.text else 0)
    figure.for_each_yaxis(lambda axis: axis.update(title_text=wrapped(axis.title.text or "", line + 2)))
    if figure.layout.legend.orientation != "h":  # under the plot, below the x-axis title's lines
        figure.update_layout(legend=dict(orientation="h", yanchor="top", x=0,
                                         y=-(0.14 + 0.08 * x_lines + (0.06 if large else 0))))
    font, ticks = (PRESENTATION_FONT, PRESENTATION_TICKS) if large else (NORMAL_FONT, NORMAL_FONT - 1)
    figure.update_layout(font_size=font, legend_font_size=ticks,
                         margin_t=max(10, min(figure.layout.margin.t or 0, 40), top_lines * (ticks + 8)),
                         margin_b=max(figure.layout.margin.b or 0, 60 if large else 40),
                         margin_r=max(figure.layout.margin.r or 0, (36 if large else 28) if right_labels else 10))
    figure.update_xaxes(tickfont_size=ticks, automargin=True)
    figure.update_yaxes(tickfont_size=ticks, automargin=True)
    figure.update_annotations(font_size=ticks)
    if main:
        container.markdown(f"**{main}**")
    if subtitle:
        container.caption(subtitle)
    container.plotly_chart(figure, width="stretch")


def interval_bars(table: pd.DataFrame) -> dict[str, Any]:
    """Plotly's error_y for a sweep's or scan's perplexities: each point's 95% interval
    (`ppl_ci95_low` to `ppl_ci95_high`), above and below it as they lie (the interval of a
    perplexity is not symmetric about it)."""
    return dict(type="data", symmetric=False, array=(table["ppl_ci95_high"] - table["perplexity"]).tolist(),
                arrayminus=(table["perplexity"] - table["ppl_ci95_low"]).tolist())


def presentation_style() -> None:
    """Presentation mode's page layout (PRESENTATION_CSS) while it is on."""
    if session().presentation:
        st.html(PRESENTATION_CSS)


def chart_columns(spec: int | list[float], stack_from: int = 3, **options: Any) -> list[Any]:
    """st.columns for charts side by side; in presentation mode a row of `stack_from` or more
    becomes charts one under the other (at projector sizes a third of the screen cannot hold a
    chart, nor half of it a chart with long labels next to a table)."""
    count = spec if isinstance(spec, int) else len(spec)
    if session().presentation and count >= stack_from:
        return [st.container() for _ in range(count)]
    return st.columns(spec, **options)


def panel_grid(panels: int) -> tuple[int, int]:
    """Rows and columns for `panels` subplots in one figure: one row normally, two columns in
    presentation mode (wider panels, room for the larger type)."""
    if session().presentation and panels > 2:
        return -(-panels // 2), 2
    return 1, panels
