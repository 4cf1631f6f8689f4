"""Timestamps: `now_iso` formats as datetime does (the web front end parses these), and `ms_of` reads a
stamp back to its exact millisecond (the listing indexes' scores)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elevenlabs_agent import timeutil

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def formatted(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.lists(st.integers(min_value=0, max_value=LAST_MS - 1), min_size=1, max_size=5))
def test_now_iso_is_the_datetime_format(times: list[int]) -> None:
    # Several calls in a row: the cached second must never leak into another second's stamp.
    for ms in [*times, *(t + 1 for t in times)]:
        with mock.patch("time.time_ns", return_value=ms * 1_000_000 + 999_999):
            assert timeutil.now_iso() == formatted(ms)


@pytest.mark.parametrize("ms", [0, 951_782_400_000, 1_796_228_613_734, LAST_MS])
def test_ms_of_reads_a_stamp_back_exactly(ms: int) -> None:
    stamp = formatted(ms)
    assert timeutil.ms_of(stamp) == ms
    with mock.patch("time.time_ns", return_value=ms * 1_000_000):
        assert timeutil.ms_of(timeutil.now_iso()) == ms  # the cached path


@given(st.integers(min_value=0, max_value=LAST_MS))
def test_ms_of_is_exact_where_float_seconds_are_not(ms: int) -> None:
    assert timeutil.ms_of(formatted(ms)) == ms
