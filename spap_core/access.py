"""Which local files a request may read. A public demo sets SPAP_ALLOWED_ROOTS (folders separated
by the OS path separator) so users can only point the app at models and texts under those folders;
unset, every path is allowed (the CLI on one's own machine)."""

from __future__ import annotations

import os
from pathlib import Path

from spap_core.errors import SpapInputError

ALLOWED_ROOTS_ENV = "SPAP_ALLOWED_ROOTS"


def allowed_roots() -> list[Path] | None:
    """The configured folders (resolved), or None when nothing is confined."""
    setting = os.environ.get(ALLOWED_ROOTS_ENV, "").strip()
    if not setting:
        return None
    return [Path(root).expanduser().resolve() for root in setting.split(os.pathsep) if root.strip()]


def confined(path: str | Path, what: str) -> Path:
    """`path` with ~ expanded, refused unless it lies under an allowed root. Symbolic links and '..'
    are resolved first, so neither can lead outside."""
    file = Path(path).expanduser()
    roots = allowed_roots()
    if roots is None:
        return file
    real = file.resolve()
    if not any(real == root or root in real.parents for root in roots):
        raise SpapInputError(
            f"The {what} {file} is outside the folders this server allows ({', '.join(map(str, roots))}); "
            "choose a file there, upload a text instead, or use the default model."
        )
    return file
