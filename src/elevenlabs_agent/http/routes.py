"""Routes (SPEC §3): parse, authenticate, call a service, render. No Redis keys in here."""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from elevenlabs_agent import SERVICE_NAME, __version__, events, metrics
from elevenlabs_agent.http import openapi
from elevenlabs_agent.http.errors import JSONResponse, read_json
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.runtime import Runtime
from elevenlabs_agent.services import speech
from elevenlabs_agent.services.callbacks import CallbackBody
from elevenlabs_agent.services.conversations import require_id
from elevenlabs_agent.services.errors import InvalidInput, Unauthorized, Unavailable
from elevenlabs_agent.services.tools import ToolCall
from elevenlabs_agent.stores.ids import is_valid_id
from elevenlabs_agent.stores.outbox import is_stream_id
from elevenlabs_agent.timeutil import now_iso

log = get_logger()
MAX_PAGE = 100
MAX_ACK_IDS = 100
MAX_OFFSET = 10_000_000
_DIGITS = re.compile(r"[0-9]{1,20}")


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _presented_secret(request: Request, *header_names: str) -> str | None:
    for name in header_names:
        if value := request.headers.get(name):
            return value
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


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
            },
        }
    )


async def config_health(request: Request) -> Response:
    rt = _runtime(request)
    (redis_ok, latency), (runner_ok, runner_detail) = await asyncio.gather(rt.redis_ping(), rt.cursor_runner.probe())
    return JSONResponse(
        {
            "service": SERVICE_NAME,
            "status": "ok" if redis_ok and runner_ok else "degraded",
            "dependencies": {
                "redis": {
                    "status": "connected" if redis_ok else "disconnected",
                    "latencyMs": round(latency, 2),
                },
                "cursorRunner": {
                    "status": "reachable" if runner_ok else "unreachable",
                    "detail": runner_detail,
                },
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
    signed = await _runtime(request).signed_urls.issue(request.query_params.get("agentId"))
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
    conversations, total = await _runtime(request).conversations.list(offset, limit)
    return JSONResponse(
        {
            "success": True,
            "conversations": [c.to_public() for c in conversations],
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


ROUTES = [
    Route("/health", health),
    Route("/ready", ready),
    Route("/metrics", metrics_endpoint),
    Route("/config", config),
    Route("/config/health", config_health),
    Route("/openapi.json", openapi_json),
    Route("/signed-url", signed_url),
    Route("/agent-tools", agent_tools, methods=["POST"]),
    Route("/agent-tools/{tool_name}", agent_tools, methods=["POST"]),
    Route("/callback", callback, methods=["POST"]),
    Route("/agent-conversations/api/list", list_conversations),
    Route("/agent-conversations/api/new", new_conversation, methods=["POST"]),
    Route("/agent-conversations/api/{conversation_id}", get_conversation),
    Route("/agent-conversations/api/{conversation_id}/message", append_message, methods=["POST"]),
    Route("/agent-conversations/api/{conversation_id}/session", register_session, methods=["POST"]),
    Route("/agent-conversations/api/{conversation_id}/events", events_stream),
    Route("/agent-conversations/api/{conversation_id}/events/ack", acknowledge_events, methods=["POST"]),
]
