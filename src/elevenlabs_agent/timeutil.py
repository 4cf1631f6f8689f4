"""Timestamps: ISO 8601 UTC with milliseconds, the format the web frontend already parses."""

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# The last stamp made and its millisecond: a request asks for "now" several times within one, and
# formatting a datetime costs more than the rest of that step.
_last: tuple[int, str] = (-1, "")
# The stamp's text up to the seconds, for the last second seen: a new millisecond only adds digits.
_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    global _last, _second
    ms = time.time_ns() // 1_000_000
    if ms != _last[0]:
        second, milli = divmod(ms, 1000)
        if second != _second[0]:
            _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _last = (ms, f"{_second[1]}.{milli:03d}Z")
    return _last[1]


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ms_of(stamp: str) -> int:
    """The Unix time in ms of an ISO stamp; the last one `now_iso` made is known without parsing."""
    ms, last = _last
    if stamp == last:
        return ms
    return (parse_iso(stamp) - _EPOCH) // _MS


def age_seconds(stamp: str | None, now: float) -> float | None:
    """Seconds from `stamp` to `now` (a Unix time); None when the stamp is missing or unreadable."""
    if not stamp:
        return None
    try:
        return now - parse_iso(stamp).timestamp()
    except ValueError:
        return None
