"""How a series went, in a few words: the toy's captions (spap_service.lesson) and the real runs'
(spap_service.analysis) both describe their objective and violation curves with these, so one
series reads the same way on both pages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def trend(values: np.ndarray, rel_tol: float = 1e-9) -> str:
    """'rises', 'falls' or 'stays' (within rel_tol), from the first value to the last."""
    first, last = float(values[0]), float(values[-1])
    if math.isclose(first, last, rel_tol=rel_tol, abs_tol=0.0):
        return "stays"
    return "rises" if last > first else "falls"


def course(values: np.ndarray, rel_tol: float = 1e-9, steps: Sequence[str] | None = None) -> str:
    """How a series went, in words, every number the value at the step it names: 'rises from a to
    b', 'falls from a to b', 'stays at a', or 'rises from a to p (iteration k), then falls to b'
    when it peaks in between; 'stays at about a' when the change does not show in three digits.
    `steps` names each value's step ('at 0.5' for a scan's value); without it the steps are ρ
    iterations, numbered from 1."""
    first, last, peak = float(values[0]), float(values[-1]), int(np.argmax(values))
    if 0 < peak < len(values) - 1 and float(values[peak]) > max(first, last):
        where = steps[peak] if steps is not None else f"iteration {peak + 1}"
        return f"rises from {first:.3g} to {float(values[peak]):.3g} ({where}), then falls to {last:.3g}"
    direction = trend(values, rel_tol)
    if direction == "stays":
        return f"stays at {last:.3g}"
    if f"{first:.3g}" == f"{last:.3g}":  # a change too small to show in 3 digits would read "rises from 206 to 206"
        return f"stays at about {last:.3g}"
    return f"{direction} from {first:.3g} to {last:.3g}"


def peaks(values: np.ndarray) -> bool:
    """The series is highest strictly between its first and last value."""
    peak = int(np.argmax(values))
    return 0 < peak < len(values) - 1 and float(values[peak]) > max(float(values[0]), float(values[-1]))
