"""EmulatorReader's pure helpers: the overlap count the lane-budget checks rely on."""

from __future__ import annotations

from qproxy.emulator.reader import parse_time, peak_concurrency


def test_peak_concurrency_counts_overlaps() -> None:
    assert peak_concurrency([]) == 0
    assert peak_concurrency([(0, 10), (1, 2), (3, 4), (5, 11)]) == 2
    assert peak_concurrency([(0, 5), (1, 6), (2, 7), (3, 8), (9, 10)]) == 4


def test_peak_concurrency_handover_is_not_overlap() -> None:
    # one job's end at the instant the next one starts: one lane, handed over
    assert peak_concurrency([(0, 1), (1, 2), (2, 3)]) == 1


def test_parse_time_fractional() -> None:
    assert parse_time("1970-01-01T00:00:01.5Z") == 1.5
