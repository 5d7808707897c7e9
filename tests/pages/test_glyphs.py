"""Every character the app writes on screen has a glyph in the fonts of a plain Linux browser (Debian's
Chromium with DejaVu, no colour-emoji font): an emoji-only character (⏳, ✅, 🔥) shows there as an
empty box, so status signs are Streamlit's material icons (`:material/hourglass_top:`) instead."""

from __future__ import annotations

from pathlib import Path

import regex
from conftest import REPO

EMOJI_ONLY = regex.compile(r"\p{Emoji_Presentation}")
SOURCES = [REPO / "app.py", *sorted((REPO / "pages").glob("*.py")), *sorted((REPO / "spap_service").glob("*.py"))]


def emoji_lines(path: Path) -> list[str]:
    return [f"{path.name}:{number}: {line.strip()}" for number, line in enumerate(path.read_text().splitlines(), 1)
            if EMOJI_ONLY.search(line)]


def test_no_page_writes_an_emoji_only_character():
    assert [line for path in SOURCES for line in emoji_lines(path)] == []


def test_the_check_finds_one(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('st.caption(f"⏳ queued")\nst.caption(":material/hourglass_top: queued")\n')
    assert emoji_lines(sample) == ['sample.py:1: st.caption(f"⏳ queued")']
