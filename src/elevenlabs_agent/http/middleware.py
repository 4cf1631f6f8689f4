"""Pure-ASGI middleware (no BaseHTTPMiddleware: it would buffer SSE streams and cost latency)."""

from __future__ import annotations

import random
import time
from urllib.parse import urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from elevenlabs_agent import events, metrics
from elevenlabs_agent.http.access import BrowserAuth, Group, Identity, Refusal, group_of, header
from elevenlabs_agent.http.errors import EXCEPTION_HANDLERS, error_response, handle_unexpected
from elevenlabs_agent.limits import MAX_HEADER_VALUE_LENGTH
from elevenlabs_agent.logging import get_logger

log = get_logger()
# Its own generator (seeded from the OS; workers are started by exec, each seeds its own): the random
# module's shared one is state that others (tests' hypothesis) watch and reseed.
_REQUEST_IDS = random.Random()

# Operational routes keep working when the feature flag is off, and so does the relay module: a page
# that imports it must still load (its relay then waits, retrying, for the service to be enabled).
ALWAYS_ON = frozenset(
    {
        "/health",
        "/ready",
        "/metrics",
        "/config",
        "/config/health",
        "/agent-conversations/relay.js",
        "/agent-conversations/relay.d.ts",
    }
)


class EdgeMiddleware:
    """The outer layer of every request: request id bound to each log line, browser authentication
    (`access.py`: HTTP, SSE and WebSocket handshakes alike), RED metrics, the access log, the
    feature flag, and a direct path to the hot routes.

    Starlette's inner stack (CORS, exception middleware, router, request wrapper) cost about a
    quarter of the CPU of a POST /agent-tools under load (py-spy). The routes ElevenLabs,
    cursor-runner and load balancers call — exact paths, no browser Origin — go straight to their
    endpoint with the same exception handlers; everything else takes the full stack as before.
    """

    def __init__(
        self,
        app: ASGIApp,
        enabled: bool,
        hot_routes: list[Route],
        access_log: bool,
        browser_auth: BrowserAuth,
        allowed_origins: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.hot = {(method, r.path): r for r in hot_routes for method in r.methods or ()}
        self.access_log = access_log
        self.browser_auth = browser_auth
        self.allowed_origins = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, origin = _edge_headers(scope)
        _bind_request_id(request_id)
        id_header = (b"x-request-id", request_id.encode())
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append(id_header)
            await send(message)

        try:
            if (refusal := self._authenticate(scope)) is not None:
                await _unauthorized(refusal, self.browser_auth.mode)(scope, receive, send_wrapper)
            elif not self.enabled and scope["path"] not in ALWAYS_ON:
                response = error_response(503, "elevenlabs-agent is disabled (ELEVENLABS_AGENT_ENABLED=false)")
                await response(scope, receive, send_wrapper)
            elif (route := self.hot.get((scope["method"], scope["path"]))) and origin is None:
                scope["route"] = route
                await _serve(route, scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # This is the outermost layer (Starlette's ServerErrorMiddleware is inside it, on the full
            # stack only): an error nothing answered is a JSON 500 here, then the server logs it.
            if not status:
                await (await handle_unexpected(Request(scope), exc))(scope, receive, send_wrapper)
            raise
        finally:
            self._record(scope, status or 500, time.perf_counter() - started)
            structlog.contextvars.clear_contextvars()

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        """RED metrics and the access log line."""
        route = scope.get("route")
        template = route.path if isinstance(route, Route) else "unmatched"
        metrics.labelled(metrics.HTTP_REQUESTS, template, scope["method"], str(status)).inc()
        metrics.labelled(metrics.HTTP_REQUEST_DURATION, template).observe(elapsed)
        if self.access_log:
            log.info(
                events.HTTP_REQUEST,
                method=scope["method"],
                path=scope["path"],
                route=template,
                status=status,
                durationMs=round(elapsed * 1000, 2),
            )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The same edge for WebSocket handshakes: request id, feature flag, counted like a request,
        and the browser's Origin checked as CORS would (CORSMiddleware only sees HTTP). A refused
        handshake is a close before accept, which the server answers with HTTP 403."""
        _bind_request_id(_edge_headers(scope)[0])
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if status == 500:
                status = {"websocket.accept": 101, "websocket.http.response.start": message.get("status", 403)}.get(
                    message["type"], 403
                )
            await send(message)

        try:
            origin = _header(scope, b"origin")
            refused = None
            if not self.enabled:
                refused = "disabled"
            elif origin is not None and not self._origin_allowed(origin, _header(scope, b"host")):
                refused = "origin_rejected"
            if refused is None:
                if (refusal := self._authenticate(scope)) is not None:
                    await _deny_websocket(scope, send_wrapper, refusal)
                    return
                await self.app(scope, receive, send_wrapper)
                return
            log.warning(events.WS_REJECTED, path=scope["path"], reason=refused, origin=origin)
            metrics.WEBSOCKET_CONNECTIONS.labels(refused).inc()
            await send_wrapper({"type": "websocket.close", "code": 1008})
        finally:
            route = scope.get("route")
            template = route.path if isinstance(route, BaseRoute) and hasattr(route, "path") else "unmatched"
            metrics.labelled(metrics.HTTP_REQUESTS, template, "GET", str(status)).inc()
            structlog.contextvars.clear_contextvars()

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        """An origin in CORS_ALLOW_ORIGINS (or `*` there), or the page's own origin (same host)."""
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        return host is not None and urlsplit(origin).netloc.lower() == host.lower()

    def _authenticate(self, scope: Scope) -> Refusal | None:
        """None when the request may go on (and then its identity is in `scope["state"]`)."""
        if group_of(scope["path"]) is not Group.BROWSER or _is_preflight(scope):
            return None
        result = self.browser_auth.identify(scope)
        if isinstance(result, Refusal):
            metrics.BROWSER_AUTH.labels(result.outcome).inc()
            log.warning(events.BROWSER_AUTH_REFUSED, reason=result.outcome, path=scope["path"])
            return result
        metrics.BROWSER_AUTH.labels("ok" if result.ref.partition(":")[0] != "none" else "none").inc()
        scope.setdefault("state", {})["identity"] = result
        structlog.contextvars.bind_contextvars(identity=result.ref)
        return None


def _edge_headers(scope: Scope) -> tuple[str, str | None]:
    """The caller's X-Request-Id (or a new one) and the Origin, in one pass over the headers."""
    request_id = origin = None
    seen_id = seen_origin = False
    for key, value in scope["headers"]:
        # The first of each counts, as with `header`.
        if key == b"x-request-id" and not seen_id:
            request_id, seen_id = _printable(value), True
        elif key == b"origin" and not seen_origin:
            origin, seen_origin = _printable(value), True
    # 128 random bits as 32 hex digits. A request id only correlates log lines, so it needs no secure
    # randomness: os.urandom's system call was 6% of a callback's CPU outside the server (py-spy).
    return request_id or f"{_REQUEST_IDS.getrandbits(128):032x}", origin


def _bind_request_id(request_id: str) -> None:
    """Bound to every log line of this request."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(requestId=request_id)


def identity_of(scope: Scope) -> Identity:
    """The identity the edge established for a browser-group request."""
    identity: Identity = scope["state"]["identity"]
    return identity


def _is_preflight(scope: Scope) -> bool:
    # Browsers send CORS preflights without credentials; they reach no data (CORSMiddleware answers).
    return scope.get("method") == "OPTIONS" and _header(scope, b"access-control-request-method") is not None


def _unauthorized(refusal: Refusal, mode: str) -> Response:
    response = error_response(401, refusal.message)
    if mode == "token":
        response.headers["WWW-Authenticate"] = 'Bearer realm="elevenlabs-agent"'
    return response


async def _deny_websocket(scope: Scope, send: Send, refusal: Refusal) -> None:
    """A 401 JSON answer to the handshake where the server can send one (the ASGI denial response
    extension), otherwise a refused handshake (403)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = error_response(401, refusal.message).body
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


async def _serve(route: Route, scope: Scope, receive: Receive, send: Send) -> None:
    """Call a JSON endpoint and render its errors with the app's handlers, as Starlette would."""
    request = Request(scope, receive)
    try:
        response = await route.endpoint(request)
    except Exception as exc:
        handler = next(EXCEPTION_HANDLERS[c] for c in type(exc).__mro__ if c in EXCEPTION_HANDLERS)
        response = await handler(request, exc)
    await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    """A short printable header value (request id, Origin), or None."""
    value = header(scope, name)
    return None if value is None else _printable(value)


def _printable(value: str | bytes) -> str | None:
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text if 0 < len(text) <= MAX_HEADER_VALUE_LENGTH and text.isprintable() else None
