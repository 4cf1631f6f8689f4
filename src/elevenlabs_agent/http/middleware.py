"""Pure-ASGI middleware (no BaseHTTPMiddleware: it would buffer SSE streams and cost latency)."""

from __future__ import annotations

import time
import uuid

import structlog
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from elevenlabs_agent import events, metrics
from elevenlabs_agent.http.errors import error_response
from elevenlabs_agent.logging import get_logger

log = get_logger()

# Operational routes keep working when the feature flag is off.
ALWAYS_ON = frozenset({"/health", "/ready", "/metrics", "/config", "/config/health"})


class FeatureFlagMiddleware:
    """ELEVENLABS_AGENT_ENABLED=false: every agent route answers 503 with a JSON error."""

    def __init__(self, app: ASGIApp, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled or scope["type"] != "http" or scope["path"] in ALWAYS_ON:
            await self.app(scope, receive, send)
            return
        response = error_response(503, "elevenlabs-agent is disabled (ELEVENLABS_AGENT_ENABLED=false)")
        await response(scope, receive, send)


class ObservabilityMiddleware:
    """Binds a request id to every log line of the request, writes the access log, counts RED metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(requestId=request_id)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = route.path if isinstance(route, Route) else "unmatched"
            metrics.HTTP_REQUESTS.labels(template, scope["method"], str(status)).inc()
            metrics.HTTP_REQUEST_DURATION.labels(template).observe(elapsed)
            log.info(
                events.HTTP_REQUEST,
                method=scope["method"],
                path=scope["path"],
                route=template,
                status=status,
                durationMs=round(elapsed * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text = value.decode("latin-1")
            return text if 0 < len(text) <= 128 and text.isprintable() else None
    return None
