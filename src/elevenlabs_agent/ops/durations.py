"""Durations as operators type them: 90s, 30m, 24h, 7d."""

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`; raises ValueError with a readable message."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 24h, 7d)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_duration(seconds: float) -> str:
    """The largest unit and the next one down, zero parts left out: 1d2h, 2d, 3h5m, 1m, 4m10s, 9s."""
    seconds = max(0, int(seconds))
    first = next(i for i, (_, size) in enumerate(_UNITS) if seconds >= size or size == 1)
    parts: list[str] = []
    for unit, size in _UNITS[first : first + 2]:
        if seconds // size or not parts:
            parts.append(f"{seconds // size}{unit}")
        seconds %= size
    return "".join(parts)
