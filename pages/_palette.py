"""One colour and one marker per pruning method, the same on every chart of the app, so that a room
that has learnt "spap is the blue circles" can read every later chart by it. The colours are the
Okabe–Ito palette, which stays distinct under the common forms of colour blindness; the dense model
is always the same neutral grey, dashed where it is a line. A method the registry gains later (or a
test's toy method) without a place in the palette gets a fallback chosen from its name, the same on
every run."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from spap_core.methods.registry import METHODS

# Okabe & Ito (2008), without black and yellow (too heavy and too faint beside the others), in the
# registry's order: spap blue, magnitude vermillion, wanda-sp bluish green, flap orange, fasp
# reddish purple, obs sky blue; then Tol's dark red for taylor, where Okabe–Ito has no more.
METHOD_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#661100")
METHOD_MARKERS = ("circle", "square", "diamond", "triangle-up", "x", "cross", "hexagram")
# For a name the palette has no place for: still readable on white, still colour-blind-safe.
FALLBACK_COLOURS = ("#332288", "#882255", "#117733", "#999933", "#44AA99", "#AA4499")
FALLBACK_MARKERS = ("star", "hexagon", "pentagon", "triangle-down", "hourglass", "bowtie")
DENSE_COLOUR = "#8C8C8C"
# A pruned model whichever method made it, beside the dense one (bars of Latency and Zero-shot).
PRUNED_COLOUR = "#332288"


@dataclass(frozen=True)
class TraceStyle:
    """How one series is drawn: its colour, its marker symbol and its line's dash."""

    colour: str
    marker: str
    dash: str = "solid"

    def line(self) -> dict[str, str]:
        """Plotly's `line` argument of a trace in this style."""
        return {"color": self.colour, "dash": self.dash}


METHOD_STYLES = {name: TraceStyle(colour, marker)
                 for name, colour, marker in zip(METHODS, METHOD_COLOURS, METHOD_MARKERS)}
DENSE = TraceStyle(DENSE_COLOUR, "circle", "dash")
DENSE_AND_PRUNED = {"dense": DENSE_COLOUR, "pruned": PRUNED_COLOUR}


def method_style(method: str) -> TraceStyle:
    """The style of `method`: its place in the palette, else a fallback fixed by its name (a hash,
    not Python's salted hash(), so it is the same in every process)."""
    if method in METHOD_STYLES:
        return METHOD_STYLES[method]
    index = zlib.crc32(method.encode())
    return TraceStyle(FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)], FALLBACK_MARKERS[index % len(FALLBACK_MARKERS)])


def method_colours(methods: list[str]) -> dict[str, str]:
    """`color_discrete_map` for a plotly express chart coloured by method."""
    return {method: method_style(method).colour for method in methods}


def method_markers(methods: list[str]) -> dict[str, str]:
    """`symbol_map` for a plotly express chart whose markers follow the method."""
    return {method: method_style(method).marker for method in methods}


def metric_style(metric: str) -> TraceStyle:
    """The style of a score metric named after its method (`magnitude`, `spap_last`): the method's
    colour and marker; a metric taken before the method's last step (`spap_first`) dotted, so the
    two scores of one method share its colour and still tell apart."""
    method, _, stage = metric.partition("_")
    style = method_style(method if method in METHOD_STYLES else metric)
    return TraceStyle(style.colour, style.marker, "dot" if stage == "first" else "solid")
