"""Domain errors raised by the models (schemas/) and the services; the HTTP layer maps each class to one
status code. Below both, so that a model can refuse input the way a service does."""

from typing import Any


class ServiceError(Exception):
    def __init__(self, message: str, /, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class InvalidInput(ServiceError):
    """The caller sent something we cannot accept (400)."""


class Unauthorized(ServiceError):
    """Missing or wrong credentials (401)."""


class Forbidden(ServiceError):
    """Authenticated or not, this is not allowed (403)."""


class NotFound(ServiceError):
    """The named resource does not exist (404)."""


class UpgradeRequired(ServiceError):
    """A WebSocket endpoint called as plain HTTP (426)."""


class Conflict(ServiceError):
    """The resource's state forbids this (409)."""


class RateLimited(ServiceError):
    """Too many calls from this identity for now (429); `retry_after` seconds until it may retry."""

    def __init__(self, message: str, /, retry_after: int) -> None:
        super().__init__(message, retryAfterSeconds=retry_after)
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """Disabled, not configured, or a dependency is down (503)."""


class UpstreamFailed(ServiceError):
    """An upstream service answered badly (502)."""
