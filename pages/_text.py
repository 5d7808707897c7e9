"""The one route by which text that a user controls reaches the screen: link keys and values, file
and model names, text labels, the fields of saved runs, and error messages that quote any of them.

Streamlit renders Markdown (with GitHub's extensions, its own `:color[…]` and `:material/…:`
directives, emoji shortcodes and `$…$` maths) in every text element and widget label, and Plotly
renders a subset of HTML (`<a href>`, `<b>`, `<br>`) in chart titles, legends and hover text. So
such text goes through `plain` before it is put into Markdown, and through `chart_text` before it
is put into a figure: it then shows exactly as typed and can make no link, image, icon or markup."""

from __future__ import annotations

import html
import re

# Every ASCII punctuation character may be escaped with a backslash in CommonMark, and an escaped
# one is always shown as itself: no link, image, emphasis, code span, directive or maths can start.
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# GitHub's autolinks are found in the text after escapes are resolved, so "http://", "www." and an
# e-mail's "@" get an invisible word joiner (U+2060) that breaks the pattern without showing.
_AUTOLINK_STARTS = re.compile(r"(?i)(?<=https:)|(?<=http:)|(?<=www)(?=\.)|(?=@)")
WORD_JOINER = "\u2060"


def plain(text: object) -> str:
    """`text` as Markdown that shows it verbatim (line breaks become spaces: a label is one line)."""
    joined = _AUTOLINK_STARTS.sub(WORD_JOINER, " ".join(str(text).split()))
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", joined)


def chart_text(text: object) -> str:
    """`text` for a Plotly title, legend or hover label: shown verbatim, no tag takes effect."""
    return html.escape(str(text), quote=False)
