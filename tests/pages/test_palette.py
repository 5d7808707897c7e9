"""The method palette: one colour and one marker per registered method, the dense model's own style."""

from pages._palette import DENSE, DENSE_AND_PRUNED, METHOD_STYLES, method_colours, method_markers, method_style
from spap_core.methods.registry import METHODS


def test_every_registered_method_has_its_own_colour_and_marker():
    styles = [method_style(method) for method in METHODS]
    assert set(METHOD_STYLES) == set(METHODS)  # none falls back while the palette has room
    assert len({style.colour for style in styles}) == len(METHODS)
    assert len({style.marker for style in styles}) == len(METHODS)
    assert method_style("spap").colour != method_style("magnitude").colour
    assert DENSE.colour not in {style.colour for style in styles} and DENSE.dash == "dash"
    assert DENSE_AND_PRUNED["dense"] == DENSE.colour and DENSE_AND_PRUNED["pruned"] != DENSE.colour


def test_an_unknown_method_gets_the_same_fallback_every_time_and_not_a_registered_ones_colour():
    toy = method_style("a-toy-method")
    assert toy == method_style("a-toy-method")
    assert toy.colour not in {style.colour for style in METHOD_STYLES.values()}
    assert method_colours(["spap", "a-toy-method"]) == {"spap": method_style("spap").colour,
                                                        "a-toy-method": toy.colour}
    assert method_markers(["a-toy-method"]) == {"a-toy-method": toy.marker}


def test_a_score_metric_takes_its_methods_colour_and_a_first_score_is_dotted():
    from pages._palette import metric_style

    assert metric_style("wanda-sp") == method_style("wanda-sp")
    assert metric_style("spap_last").colour == metric_style("spap_first").colour == method_style("spap").colour
    assert (metric_style("spap_first").dash, metric_style("spap_last").dash) == ("dot", "solid")
    assert metric_style("a-toy-metric") == method_style("a-toy-metric")
