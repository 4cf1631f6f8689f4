"""Timestamps: ISO 8601 UTC with milliseconds, the format the web frontend already parses."""

from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def age_seconds(stamp: str | None, now: float) -> float | None:
    """Seconds from `stamp` to `now` (a Unix time); None when the stamp is missing or unreadable."""
    if not stamp:
        return None
    try:
        return now - parse_iso(stamp).timestamp()
    except ValueError:
        return None
