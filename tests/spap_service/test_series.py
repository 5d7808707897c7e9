"""A series in words: the same sentence for the toy's curves and a real run's."""

import numpy as np

from spap_service.series import course, peaks, trend


def test_course_names_a_peak_in_between_and_each_number_where_it_was():
    """The fall is quoted from the peak, not from the first value (which the old caption did)."""
    assert course(np.array([1.67, 2.97, 0.066])) == "rises from 1.67 to 2.97 (iteration 2), then falls to 0.066"
    assert course(np.array([3.0, 2.0, 1.0])) == "falls from 3 to 1"
    assert course(np.array([1.0, 2.0, 3.0])) == "rises from 1 to 3"
    assert course(np.array([2.0, 2.0])) == "stays at 2"
    assert course(np.array([206.1, 206.3])) == "stays at about 206"  # never "rises from 206 to 206"


def test_trend_and_peaks_read_the_first_last_and_highest_values():
    assert trend(np.array([1.0, 5.0, 1.0 + 1e-12])) == "stays"
    assert trend(np.array([1.0, 0.5])) == "falls" and trend(np.array([0.5, 1.0])) == "rises"
    assert peaks(np.array([1.0, 3.0, 2.0])) and not peaks(np.array([1.0, 2.0, 3.0]))
    assert not peaks(np.array([3.0, 3.0, 1.0]))  # highest at the start: no peak in between


def test_course_names_the_peak_by_the_step_it_is_given():
    """A scan's values are not ρ iterations: the peak is named by the value it was measured at."""
    values = np.array([25.0, 30.0, 18.0])
    assert course(values, steps=["at 0.1", "at 0.5", "at 0.9"]) == "rises from 25 to 30 (at 0.5), then falls to 18"
    assert course(np.array([3.0, 1.0]), steps=["at 1", "at 2"]) == "falls from 3 to 1"
