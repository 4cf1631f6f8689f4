"""The domain errors, as services and the HTTP layer import them (defined in elevenlabs_agent/errors.py)."""

from elevenlabs_agent.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    ServiceError,
    Unauthorized,
    Unavailable,
    UpgradeRequired,
    UpstreamFailed,
)

__all__ = [
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "RateLimited",
    "ServiceError",
    "Unauthorized",
    "Unavailable",
    "UpgradeRequired",
    "UpstreamFailed",
]
