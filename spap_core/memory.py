"""Returning freed memory to the operating system between the big steps of a run, so a
low-memory run's peak is what it holds at once and not what it has ever held."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only (not musl, macOS)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def release_freed_memory(collect_cycles: bool = False) -> None:
    """glibc keeps freed blocks of large temporaries (a layer's Gram and solves, a tokenized text)
    in its heap unless asked to return them. accelerate's hook wrappers also tie modules into
    reference cycles, so a hooked layer's replaced modules and dense weights wait for a collection:
    `collect_cycles` runs one, which costs ~0.2 s with a model loaded, so only where hooks were
    removed. Measured on SmolLM2 with every layer on disk: +850 MiB over the 30 layers without this."""
    if collect_cycles:
        gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
