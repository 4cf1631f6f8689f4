"""Routes (SPEC §3): parse, authenticate, call a service, render. No Redis keys in here."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from elevenlabs_agent import SERVICE_NAME, __version__, events, metrics
from elevenlabs_agent.http import openapi
from elevenlabs_agent.http.access import AUTH_PATH, TOKEN_COOKIE, BrowserAuth, bearer
from elevenlabs_agent.http.errors import JSONResponse, read_json
from elevenlabs_agent.http.middleware import identity_of
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.runtime import Runtime
from elevenlabs_agent.services import live, speech
from elevenlabs_agent.services.callbacks import CallbackBody
from elevenlabs_agent.services.conversations import RESERVED_CONVERSATION_IDS, require_id
from elevenlabs_agent.services.errors import InvalidInput, NotFound, Unauthorized, Unavailable, UpgradeRequired
from elevenlabs_agent.services.tools import ToolCall
from elevenlabs_agent.stores.ids import is_valid_id
from elevenlabs_agent.stores.outbox import is_stream_id
from elevenlabs_agent.timeutil import now_iso

log = get_logger()
MAX_PAGE = 100
MAX_ACK_IDS = 100
MAX_OFFSET = 10_000_000
_DIGITS = re.compile(r"[0-9]{1,20}")
# WebSocket close codes: 1001 going away (the instance drains; browsers reconnect elsewhere), 1008
# policy (a malformed id), 1013 try again later (Redis unavailable), 4404 no such conversation.
WS_GOING_AWAY = 1001
WS_NOT_FOUND = 4404
WS_TRY_AGAIN = 1013


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _presented_secret(request: Request, *header_names: str) -> str | None:
    for name in header_names:
        if value := request.headers.get(name):
            return value
    return bearer(request.scope)


# --- operations -----------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    rt = _runtime(request)
    ok, _ = await rt.redis_ping(timeout=0.5)
    return JSONResponse(
        {
            "status": "ok",
            "service": SERVICE_NAME,
            "version": __version__,
            "redis": "connected" if ok else "disconnected",
            "draining": rt.draining,
            # Callbacks made durable locally while Redis was down, waiting to be replayed (null: off).
            "callbackSpool": rt.journal.summary() if rt.journal is not None else None,
            "uptimeSeconds": round(time.time() - rt.started_at, 1),
            "timestamp": now_iso(),
        }
    )


async def ready(request: Request) -> Response:
    rt = _runtime(request)
    ok, latency = await rt.redis_ping()
    passing = ok and not rt.draining
    body = {
        "status": "pass" if passing else "fail",
        "service": SERVICE_NAME,
        "checks": {
            "redis:ping": [
                {
                    "status": "pass" if ok else "fail",
                    "observedValue": round(latency, 2),
                    "observedUnit": "ms",
                    "time": now_iso(),
                }
            ],
            "service:draining": [{"status": "fail" if rt.draining else "pass", "observedValue": rt.draining}],
            # `warn` never fails readiness: it tells whoever looks that browser routes are open.
            "browser:auth": [
                {
                    "status": "warn" if rt.settings.browser_auth == "none" else "pass",
                    "observedValue": rt.settings.browser_auth,
                }
            ],
            **_spool_check(rt),
        },
    }
    return Response(orjson.dumps(body), status_code=200 if passing else 503, media_type="application/health+json")


def _spool_check(rt: Runtime) -> dict[str, Any]:
    """Spooled callbacks do not make the instance unready (it still takes callbacks): a warning."""
    if rt.journal is None:
        return {}
    spool = rt.journal.summary()
    return {
        "callbackSpool:records": [
            {
                "status": "warn" if spool["records"] or not spool["writable"] else "pass",
                "observedValue": spool["records"],
                "oldestAgeSeconds": spool["oldestAgeSeconds"],
                "writable": spool["writable"],
            }
        ]
    }


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def config(request: Request) -> Response:
    s = _runtime(request).settings
    return JSONResponse(
        {
            "success": True,
            "config": {
                "agentId": s.elevenlabs_agent_id,
                "agentUrl": s.elevenlabs_agent_url,
                "cursorRunnerUrl": s.cursor_runner_url,
                "webhookSecretConfigured": s.webhook_configured,
                "redisUrl": "configured" if s.redis_url else "embedded",
                "hasApiKey": s.elevenlabs_api_key is not None,
                "enabled": s.elevenlabs_agent_enabled,
                "browserAuth": s.browser_auth,
            },
        }
    )


async def config_health(request: Request) -> Response:
    rt = _runtime(request)
    (redis_ok, latency), runner = await asyncio.gather(rt.redis_ping(), rt.cursor_runner.probe())
    redis_state = "connected" if redis_ok else "disconnected"
    return JSONResponse(
        {
            "service": SERVICE_NAME,
            "status": "ok" if redis_ok and runner.state == "connected" else "degraded",
            # Plain strings: the front end renders them as text (SPEC §3.1); detail is in `checks`.
            "dependencies": {"redis": redis_state, "cursorRunner": runner.state},
            "checks": {
                "redis": {"status": redis_state, "latencyMs": round(latency, 2)},
                "cursorRunner": {"status": runner.state, "detail": runner.detail},
            },
            "timestamp": now_iso(),
        }
    )


async def openapi_json(request: Request) -> Response:
    s = _runtime(request).settings
    document = openapi.document(
        max_body_bytes=s.max_body_bytes,
        max_callback_body_bytes=s.max_callback_body_bytes,
        max_page=MAX_PAGE,
        max_offset=MAX_OFFSET,
        max_ack_ids=MAX_ACK_IDS,
    )
    return Response(document, media_type="application/json")


# --- ElevenLabs-facing ----------------------------------------------------------------------------


async def signed_url(request: Request) -> Response:
    identity = identity_of(request.scope).ref
    signed = await _runtime(request).signed_urls.issue(request.query_params.get("agentId"), identity)
    expires = signed.expires_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return JSONResponse({"signedUrl": signed.url, "expiresAt": expires})


async def agent_tools(request: Request) -> Response:
    rt = _runtime(request)
    settings = rt.settings
    if settings.webhook_configured:
        assert settings.webhook_secret is not None
        presented = _presented_secret(request, "x-webhook-secret")
        expected = settings.webhook_secret.get_secret_value().encode()
        if presented is None or not hmac.compare_digest(presented.encode(), expected):
            log.warning(events.WEBHOOK_UNAUTHORIZED, reason="missing secret" if presented is None else "wrong secret")
            metrics.WEBHOOKS.labels("unauthorized").inc()
            raise Unauthorized("missing or invalid webhook secret")
    elif not settings.elevenlabs_agent_insecure_dev:
        log.error(events.WEBHOOK_NOT_CONFIGURED)
        metrics.WEBHOOKS.labels("not_configured").inc()
        raise Unavailable("webhook is not configured (WEBHOOK_SECRET is not set)", message=speech.NOT_CONFIGURED)
    body = await read_json(request, settings.max_body_bytes)
    path_tool = request.path_params.get("tool_name")
    call = ToolCall.parse(body, path_tool)
    structlog.contextvars.bind_contextvars(toolName=call.tool_name)
    if call.conversation_id:
        structlog.contextvars.bind_contextvars(conversationId=call.conversation_id)
    log.info(events.WEBHOOK_RECEIVED)
    result = await rt.tools.handle(call)
    return JSONResponse(result)


async def callback(request: Request) -> Response:
    rt = _runtime(request)
    body = CallbackBody.parse(await read_json(request, rt.settings.max_callback_body_bytes))
    structlog.contextvars.bind_contextvars(taskId=body.request_id)
    secret = _presented_secret(request, "x-cursor-runner-secret", "x-webhook-secret") or request.query_params.get(
        "secret"
    )
    return JSONResponse(await rt.callbacks.handle(body, secret))


# --- browser-facing -------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    """BROWSER_AUTH=token: trade a token for an HttpOnly cookie, so EventSource and WebSocket (which
    cannot set headers) are authenticated too. DELETE clears the cookie."""
    rt = _runtime(request)
    if rt.settings.browser_auth != "token":
        raise InvalidInput(f"token sign-in is not used here (BROWSER_AUTH={rt.settings.browser_auth})")
    response = JSONResponse({"success": True})
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    if request.method == "DELETE":
        response.delete_cookie(TOKEN_COOKIE, path="/", secure=secure, httponly=True, samesite="strict")
        return response
    body = await read_json(request, rt.settings.max_body_bytes)
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise InvalidInput("token must be a non-empty string")
    auth: BrowserAuth = request.app.state.browser_auth
    if not auth.token_valid(token):
        log.warning(events.BROWSER_AUTH_REFUSED, reason="invalid_token", path=request.url.path)
        metrics.BROWSER_AUTH.labels("invalid_token").inc()
        raise Unauthorized("invalid token")
    log.info(events.BROWSER_LOGIN)
    # SameSite=Strict: another site's page cannot make the browser send it (no cross-site writes).
    response.set_cookie(TOKEN_COOKIE, token, path="/", secure=secure, httponly=True, samesite="strict")
    return response


def _page_params(request: Request) -> tuple[int, int]:
    limit_text = request.query_params.get("limit", "20")
    offset_text = request.query_params.get("offset", "0")
    # ASCII digits only: int() would also take " 5", "1_0" and non-ASCII digits.
    if not (_DIGITS.fullmatch(limit_text) and _DIGITS.fullmatch(offset_text)):
        raise InvalidInput("limit and offset must be integers")
    limit, offset = int(limit_text), int(offset_text)
    if not 1 <= limit <= MAX_PAGE or not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"limit must be 1-{MAX_PAGE} and offset 0-{MAX_OFFSET}")
    return offset, limit


async def list_conversations(request: Request) -> Response:
    offset, limit = _page_params(request)
    conversations, total = await _runtime(request).conversations.list(
        offset, limit, request.query_params.get("sortBy"), request.query_params.get("sortOrder")
    )
    return JSONResponse(
        {
            "success": True,
            "conversations": [c.to_public() for c in conversations],
            # The front end reads `pagination` (SPEC §3.1); the top-level fields stay for older clients.
            "pagination": {"total": total, "limit": limit, "offset": offset, "hasMore": offset + limit < total},
            "total": total,
            "offset": offset,
            "limit": limit,
        }
    )


async def new_conversation(request: Request) -> Response:
    rt = _runtime(request)
    body: Any = {}
    if request.headers.get("content-length", "0") != "0" or request.headers.get("transfer-encoding"):
        body = await read_json(request, rt.settings.max_body_bytes)
    conversation = await rt.conversations.create(body)
    return JSONResponse(
        {"success": True, "conversation": conversation.to_public(), **conversation.to_public()},
        status_code=201,
    )


async def get_conversation(request: Request) -> Response:
    conversation = await _runtime(request).conversations.get(request.path_params["conversation_id"])
    return JSONResponse({"success": True, "conversation": conversation.to_public(), **conversation.to_public()})


async def append_message(request: Request) -> Response:
    rt = _runtime(request)
    conversation_id = require_id(request.path_params["conversation_id"])
    message = await rt.conversations.append(conversation_id, await read_json(request, rt.settings.max_body_bytes))
    return JSONResponse({"success": True, "message": message}, status_code=201)


async def register_session(request: Request) -> Response:
    rt = _runtime(request)
    conversation_id = require_id(request.path_params["conversation_id"])
    structlog.contextvars.bind_contextvars(conversationId=conversation_id)
    registration = await rt.conversations.register_session(
        conversation_id, await read_json(request, rt.settings.max_body_bytes)
    )
    return JSONResponse(
        {
            "success": True,
            "message": "Session registered",
            "sessionId": registration.session_id,
            "pendingResults": registration.pending_results,
        }
    )


async def acknowledge_events(request: Request) -> Response:
    rt = _runtime(request)
    conversation_id = require_id(request.path_params["conversation_id"])
    body = await read_json(request, rt.settings.max_body_bytes)
    task_ids = body.get("taskIds") if isinstance(body, dict) else None
    if (
        not isinstance(task_ids, list)
        or not 1 <= len(task_ids) <= MAX_ACK_IDS
        or not all(is_valid_id(t) for t in task_ids)
    ):
        raise InvalidInput(f"taskIds must be a list of 1-{MAX_ACK_IDS} task ids")
    acknowledged = await rt.delivery.acknowledge(conversation_id, task_ids)
    return JSONResponse({"success": True, "acknowledged": acknowledged})


async def events_stream(request: Request) -> Response:
    rt = _runtime(request)
    conversation_id = require_id(request.path_params["conversation_id"])
    last_event_id = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    if last_event_id is not None and not is_stream_id(last_event_id):
        raise InvalidInput("Last-Event-ID must be an event id this stream sent")
    await rt.conversations.get(conversation_id)  # 404 for an unknown conversation
    log.info(events.SSE_CONNECTED, conversationId=conversation_id, resume=last_event_id is not None)

    async def stream() -> AsyncIterator[bytes]:
        metrics.SSE_SUBSCRIBERS.inc()
        yield b"retry: 3000\n\n"
        try:
            async for event in rt.delivery.subscribe(conversation_id, last_event_id):
                if rt.draining:
                    return
                if event is None:
                    yield b": keep-alive\n\n"
                    continue
                data = orjson.dumps({**event.data, "eventId": event.id})
                yield b"id: " + event.id.encode() + b"\nevent: task_update\ndata: " + data + b"\n\n"
        except RedisError as exc:
            # The response has started: the stream can only end. The browser reconnects by itself.
            log.error(events.REDIS_UNAVAILABLE, path=request.url.path, error=type(exc).__name__)
        finally:
            metrics.SSE_SUBSCRIBERS.dec()
            log.info(events.SSE_DISCONNECTED, conversationId=conversation_id)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- the browser half of the relay (SPEC §5.4) -------------------------------------------------------


@dataclass(frozen=True)
class WebAsset:
    """A file of `elevenlabs_agent/web/` (package data), served as is: no build step, no data in it."""

    body: bytes
    media_type: str
    etag: str
    headers: dict[str, str]


# Cached for 5 minutes, then revalidated by ETag: a deploy reaches every page within that time.
WEB_ASSET_CACHE_CONTROL = "public, max-age=300"


def _web_asset(name: str, media_type: str, **headers: str) -> WebAsset:
    body = (resources.files("elevenlabs_agent") / "web" / name).read_bytes()
    etag = f'"{__version__}-{hashlib.sha256(body).hexdigest()[:16]}"'
    return WebAsset(body, media_type, etag, headers)


WEB_ASSETS = {
    "/agent-conversations/relay.js": _web_asset(
        "relay.js", "text/javascript; charset=utf-8", **{"X-TypeScript-Types": "./relay.d.ts"}
    ),
    "/agent-conversations/relay.d.ts": _web_asset("relay.d.ts", "application/typescript; charset=utf-8"),
}


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def _serve_web_asset(asset: WebAsset) -> Callable[[Request], Awaitable[Response]]:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": WEB_ASSET_CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
        **asset.headers,
    }

    async def endpoint(request: Request) -> Response:
        if _etag_matches(request.headers.get("if-none-match"), asset.etag):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    return endpoint


# --- live updates (SPEC §3.1) ----------------------------------------------------------------------


async def conversation_updates(websocket: WebSocket) -> None:
    """Live updates of one conversation (SPEC §3.1): a snapshot, then the whole conversation again on
    every change made by any instance (services/live.py). Origin and the feature flag are checked at
    the edge (EdgeMiddleware) before this runs."""
    rt: Runtime = websocket.app.state.runtime
    conversation_id = websocket.query_params.get("conversationId", "")
    await websocket.accept()
    if not is_valid_id(conversation_id):
        metrics.WEBSOCKET_CONNECTIONS.labels("invalid_id").inc()
        await _refuse(
            websocket,
            conversation_id,
            "conversationId must be 1-128 characters of letters, digits, '_', '.', '-'",
            1008,
        )
        return
    structlog.contextvars.bind_contextvars(conversationId=conversation_id)
    subscriber = rt.live.subscribe(conversation_id)
    try:
        try:
            conversation = await rt.conversations.get(conversation_id)
        except NotFound:
            metrics.WEBSOCKET_CONNECTIONS.labels("unknown_conversation").inc()
            await _refuse(websocket, conversation_id, "conversation not found", WS_NOT_FOUND)
            return
        except (RedisError, OSError) as exc:
            log.error(events.REDIS_UNAVAILABLE, path=websocket.url.path, error=type(exc).__name__)
            metrics.WEBSOCKET_CONNECTIONS.labels("redis_unavailable").inc()
            await _refuse(websocket, conversation_id, "storage unavailable, try again", WS_TRY_AGAIN)
            return
        metrics.WEBSOCKET_CONNECTIONS.labels("accepted").inc()
        log.info(events.WS_CONNECTED)
        await websocket.send_text(live.conversation_frame(live.SNAPSHOT, conversation))
        metrics.WEBSOCKET_FRAMES.labels(live.SNAPSHOT).inc()
        await _pump(websocket, subscriber)
    finally:
        rt.live.unsubscribe(subscriber)


async def _pump(websocket: WebSocket, subscriber: live.Subscriber) -> None:
    """Send queued frames until the client goes away or the instance drains. An idle socket is this
    coroutine waiting on two futures (the client, its mailbox): no Redis traffic, no other task."""
    receiving = asyncio.ensure_future(websocket.receive())
    try:
        while True:
            waiting: set[asyncio.Future[Any]] = {receiving, subscriber.ready()}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if receiving.done():
                message = receiving.result()
                if message["type"] == "websocket.disconnect":
                    log.info(events.WS_DISCONNECTED, code=message.get("code"))
                    return
                if message.get("text") == '{"type":"ping"}':
                    await websocket.send_text('{"type":"pong"}')
                receiving = asyncio.ensure_future(websocket.receive())
            while subscriber.frames:
                text = subscriber.frames.pop(0)
                if text is None:
                    log.info(events.WS_CLOSING_FOR_DRAIN)
                    await websocket.close(WS_GOING_AWAY)
                    return
                await websocket.send_text(text)
    except (WebSocketDisconnect, RuntimeError, OSError):
        log.info(events.WS_DISCONNECTED)
    finally:
        receiving.cancel()


async def _refuse(websocket: WebSocket, conversation_id: str, error: str, code: int) -> None:
    await websocket.send_text(live.frame(live.ERROR, conversation_id, error=error))
    await websocket.close(code)


async def websocket_needs_upgrade(request: Request) -> Response:
    conversation_id = require_id(request.query_params.get("conversationId", ""), "conversationId")
    if conversation_id in RESERVED_CONVERSATION_IDS:
        raise InvalidInput(f"conversationId {conversation_id!r} is reserved")
    raise UpgradeRequired("this endpoint is a WebSocket: connect with an Upgrade: websocket handshake")


METRICS_ROUTE = Route("/metrics", metrics_endpoint)
METRICS_ROUTES = [Route("/health", health), Route("/ready", ready), METRICS_ROUTE]
ROUTES = [
    *METRICS_ROUTES,
    Route("/config", config),
    Route("/config/health", config_health),
    Route("/openapi.json", openapi_json),
    Route("/signed-url", signed_url),
    Route("/agent-tools", agent_tools, methods=["POST"]),
    Route("/agent-tools/{tool_name}", agent_tools, methods=["POST"]),
    Route("/callback", callback, methods=["POST"]),
    *(Route(path, _serve_web_asset(asset), methods=["GET"]) for path, asset in WEB_ASSETS.items()),
    Route(AUTH_PATH, login, methods=["POST", "DELETE"]),
    Route("/agent-conversations/api/list", list_conversations),
    WebSocketRoute("/agent-conversations/api/ws", conversation_updates),
    Route("/agent-conversations/api/ws", websocket_needs_upgrade),
    Route("/agent-conversations/api/new", new_conversation, methods=["POST"]),
    Route("/agent-conversations/api/{conversation_id}", get_conversation),
    Route("/agent-conversations/api/{conversation_id}/message", append_message, methods=["POST"]),
    Route("/agent-conversations/api/{conversation_id}/session", register_session, methods=["POST"]),
    Route("/agent-conversations/api/{conversation_id}/events", events_stream),
    Route("/agent-conversations/api/{conversation_id}/events/ack", acknowledge_events, methods=["POST"]),
]
