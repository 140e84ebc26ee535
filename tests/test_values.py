"""monitor.values: numbers read back from stored, untrusted values never raise."""

from __future__ import annotations

import pytest

from monitor.values import finite_float, stored_count

HOSTILE = [None, "", "abc", "NaN", "nan", "inf", "-Infinity", "1e400", 10**400, [], {}, object()]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_is_no_number(value):
    assert finite_float(value) is None
    assert stored_count(value) == 0.0


@pytest.mark.parametrize(
    ("value", "number"), [("3.5", 3.5), (b"2", 2.0), (7, 7.0), ("-1.5", -1.5), ("1e300", 1e300)]
)
def test_a_stored_number_reads_back(value, number):
    assert finite_float(value) == number


def test_a_count_is_never_negative():
    assert stored_count("-5") == 0.0
    assert stored_count("12") == 12.0
    assert stored_count(b"0.25") == 0.25
