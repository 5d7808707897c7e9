"""Which local files a request may read and write. A public demo sets SPAP_ALLOWED_ROOTS (folders
separated by the OS path separator) so users can only point the app at models and texts under those
folders; unset, every path is allowed (the CLI on one's own machine). Every path the CLI and the app
read or write (models, texts, device maps, offload and task folders, output folders) goes through
`confined` first, and nothing outside the roots is even looked at: a refusal never tells whether
something exists there. An output folder is also kept apart from the run's inputs
(`output_folder`), so saving can never replace what the run reads."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
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
            "choose one there."
        )
    if real.is_dir():
        for entry in real.rglob("*"):
            if not _inside(entry.resolve(), roots):
                raise SpapInputError(
                    f"The {what} {file} holds {entry.relative_to(real)}, which leads outside the folders this "
                    "server allows; remove the link or copy the file in.")
    return file


def output_folder(path: str | Path, what: str, inputs: Mapping[str, str | Path], replace: bool = False,
                  replace_option: str = "") -> Path:
    """`path` as a folder a run may write its whole output into, refused in one line before any
    work: outside the allowed roots; the current folder or one holding it (renaming cannot replace
    those); equal to, holding or inside one of `inputs` (what the run reads, by what each is:
    replacing the output would delete it, writing inside it would mix the output into it); an
    existing file; a non-empty folder unless `replace` (`replace_option` says how to allow it); or a
    place this process cannot create a folder in. Nothing is left behind by the check."""
    folder = confined(path, what)
    real = folder.resolve()
    if Path.cwd().resolve().is_relative_to(real):
        raise SpapInputError(f"The {what} {folder} is the current folder or holds it; choose a new folder.")
    for name, source in inputs.items():
        clash = overlap(real, Path(source).expanduser().resolve())
        if clash is not None:
            raise SpapInputError(f"The {what} {folder} {clash} the {name} {source}, which the run reads; "
                                 "choose a folder apart from the run's inputs.")
    if os.path.lexists(folder) and not folder.is_dir():
        raise SpapInputError(f"The {what} {folder} exists and is not a folder; choose a new folder.")
    if folder.is_dir() and not replace and any(folder.iterdir()):
        raise SpapInputError(f"The {what} {folder} is not empty; choose a new or empty folder"
                             + (f", or pass {replace_option} to replace it." if replace_option else "."))
    _check_creatable(folder, what)
    return folder


def overlap(output: Path, source: Path) -> str | None:
    """How the resolved `output` overlaps the resolved `source`, in words, or None when apart."""
    if output == source:
        return "is"
    if output in source.parents:
        return "holds"
    if source in output.parents:
        return "lies inside"
    return None


def _check_creatable(folder: Path, what: str) -> None:
    """Refuse `folder` unless a folder can be made where it goes: its nearest existing ancestor
    must be a folder this process can create a folder in (tried with an empty, hidden folder that
    is removed at once; permission bits alone do not tell, e.g. under /proc or on a read-only
    mount)."""
    ancestor = folder.parent if folder.is_dir() else folder
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SpapInputError(f"The {what} {folder} cannot be made: {ancestor} is not a folder.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".spap-write-check-", dir=ancestor))
    except OSError as exc:
        raise SpapInputError(f"The {what} {folder} cannot be written: {exc.strerror or exc} in {ancestor}.") from None


def _inside(real: Path, roots: list[Path]) -> bool:
    return any(real == root or root in real.parents for root in roots)


def may_inspect(path: str | Path) -> bool:
    """Whether the server may look at `path` at all (ask whether it exists): always without roots,
    else only inside them."""
    roots = allowed_roots()
    return roots is None or _inside(Path(path).expanduser().resolve(), roots)


# What a path that is not a regular file is, for the message that refuses it.
FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def readable_file(path: str | Path, what: str, max_bytes: int) -> Path:
    """The path of a file that may be read whole: confined, a regular file, at most `max_bytes`.
    Decided from its metadata (stat), never by opening it: opening a FIFO blocks, and /dev/zero
    never ends. Read it with `read_limited`, which stops one byte past the limit even if it grew."""
    file = confined(path, what)
    try:
        info = os.stat(file)
    except (FileNotFoundError, NotADirectoryError):
        raise SpapInputError(f"The {what} {file} does not exist.") from None
    except OSError as exc:
        raise SpapInputError(f"The {what} {file} cannot be read: {exc.strerror or exc}.") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in FILE_KINDS if test(info.st_mode)), "not a regular file")
        raise SpapInputError(f"The {what} {file} is {kind}, not a regular file.")
    if info.st_size > max_bytes:
        raise SpapInputError(f"The {what} {file} is {_size(info.st_size)}; the limit is {_size(max_bytes)}.")
    return file


def read_limited(file: Path, max_bytes: int) -> bytes:
    """At most max_bytes + 1 bytes of `file` (so a file that grew past the limit is still caught)."""
    with open(file, "rb") as handle:
        return handle.read(max_bytes + 1)


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KiB"
