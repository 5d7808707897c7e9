"""Which local files a request may read. A public demo sets SPAP_ALLOWED_ROOTS (folders separated
by the OS path separator) so users can only point the app at models and texts under those folders;
unset, every path is allowed (the CLI on one's own machine)."""

from __future__ import annotations

import os
from pathlib import Path

from spap_core.errors import SpapInputError

ALLOWED_ROOTS_ENV = "SPAP_ALLOWED_ROOTS"
NAME_MAX, PATH_MAX = 255, 4096  # what Linux file systems accept; longer paths fail every system call


def allowed_roots() -> list[Path] | None:
    """The configured folders (resolved), or None when nothing is confined."""
    setting = os.environ.get(ALLOWED_ROOTS_ENV, "").strip()
    if not setting:
        return None
    return [Path(root).expanduser().resolve() for root in setting.split(os.pathsep) if root.strip()]


def checked_path(path: str | Path, what: str) -> Path:
    """`path` with ~ expanded, refused in one line when the OS could not even look it up (a name
    over 255 characters fails every system call with 'File name too long')."""
    text = str(path)
    if len(text) > PATH_MAX or any(len(part) > NAME_MAX for part in Path(text).parts):
        raise SpapInputError(f"The {what} path is too long ({len(text)} characters; a name may have at most "
                             f"{NAME_MAX}): {text[:80]}…")
    return Path(text).expanduser()


def confined(path: str | Path, what: str) -> Path:
    """`path` with ~ expanded, refused unless it lies under an allowed root, and so does every file
    in it when it is a folder (a model folder's files are what the loaders open). Symbolic links
    and '..' are resolved first, file by file, so neither can lead outside."""
    file = checked_path(path, what)
    roots = allowed_roots()
    if roots is None:
        return file
    real = file.resolve()
    if not _inside(real, roots):
        raise SpapInputError(
            f"The {what} {file} is outside the folders this server allows ({', '.join(map(str, roots))}); "
            "choose a file there, upload a text instead, or use the default model."
        )
    if real.is_dir():
        for entry in real.rglob("*"):
            if not _inside(entry.resolve(), roots):
                raise SpapInputError(
                    f"The {what} {file} holds {entry.relative_to(real)}, which leads outside the folders this "
                    "server allows; remove the link or copy the file in.")
    return file


def _inside(real: Path, roots: list[Path]) -> bool:
    return any(real == root or root in real.parents for root in roots)
