"""The browser's HTTP routes (SPEC §3, §3.1): conversations, their event stream, sign-in, signed URLs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from elevenlabs_agent import events, metrics
from elevenlabs_agent.errors import InvalidInput, Unauthorized
from elevenlabs_agent.http.access import TOKEN_COOKIE, BrowserAuth
from elevenlabs_agent.http.errors import JSONResponse, read_json
from elevenlabs_agent.http.middleware import identity_of
from elevenlabs_agent.http.routes.base import query_of, runtime_of
from elevenlabs_agent.limits import SSE_RETRY_MS
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.schemas.base import decode
from elevenlabs_agent.schemas.conversations import (
    BrowserSignIn,
    EventsAck,
    ListQuery,
    NewConversation,
    SessionRegistration,
    parse_message,
    require_id,
    valid_last_event_id,
)

log = get_logger()


async def signed_url(request: Request) -> Response:
    identity = identity_of(request.scope).ref
    signed = await runtime_of(request).signed_urls.issue(query_of(request.query_params).get("agentId"), identity)
    expires = signed.expires_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return JSONResponse({"signedUrl": signed.url, "expiresAt": expires})


async def login(request: Request) -> Response:
    """BROWSER_AUTH=token: trade a token for an HttpOnly cookie, so EventSource and WebSocket (which
    cannot set headers) are authenticated too. DELETE clears the cookie."""
    rt = runtime_of(request)
    if rt.settings.browser_auth != "token":
        raise InvalidInput(f"token sign-in is not used here (BROWSER_AUTH={rt.settings.browser_auth})")
    response = JSONResponse({"success": True})
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    if request.method == "DELETE":
        response.delete_cookie(TOKEN_COOKIE, path="/", secure=secure, httponly=True, samesite="strict")
        return response
    token = decode(BrowserSignIn, await read_json(request, rt.settings.max_body_bytes)).token
    auth: BrowserAuth = request.app.state.browser_auth
    if not auth.token_valid(token):
        log.warning(events.BROWSER_AUTH_REFUSED, reason="invalid_token", path=request.url.path)
        metrics.BROWSER_AUTH.labels("invalid_token").inc()
        raise Unauthorized("invalid token")
    log.info(events.BROWSER_LOGIN)
    # SameSite=Strict: another site's page cannot make the browser send it (no cross-site writes).
    response.set_cookie(TOKEN_COOKIE, token, path="/", secure=secure, httponly=True, samesite="strict")
    return response


async def list_conversations(request: Request) -> Response:
    query = ListQuery.parse(query_of(request.query_params))
    conversations, total = await runtime_of(request).conversations.list(query)
    offset, limit = query.offset, query.limit
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
    rt = runtime_of(request)
    body: Any = {}
    if request.headers.get("content-length", "0") != "0" or request.headers.get("transfer-encoding"):
        body = await read_json(request, rt.settings.max_body_bytes)
    conversation = await rt.conversations.create(decode(NewConversation, body))
    return JSONResponse(
        {"success": True, "conversation": conversation.to_public(), **conversation.to_public()},
        status_code=201,
    )


async def get_conversation(request: Request) -> Response:
    conversation_id = require_id(request.path_params["conversation_id"])
    conversation = await runtime_of(request).conversations.get(conversation_id)
    return JSONResponse({"success": True, "conversation": conversation.to_public(), **conversation.to_public()})


async def append_message(request: Request) -> Response:
    rt = runtime_of(request)
    conversation_id = require_id(request.path_params["conversation_id"])
    message = parse_message(await read_json(request, rt.settings.max_body_bytes))
    stored = await rt.conversations.append(conversation_id, message)
    return JSONResponse({"success": True, "message": stored}, status_code=201)


async def register_session(request: Request) -> Response:
    rt = runtime_of(request)
    conversation_id = require_id(request.path_params["conversation_id"])
    structlog.contextvars.bind_contextvars(conversationId=conversation_id)
    body = await read_json(request, rt.settings.max_body_bytes)
    registered = await rt.conversations.register_session(
        conversation_id, decode(SessionRegistration, body, rt.conversations.url_error)
    )
    return JSONResponse(
        {
            "success": True,
            "message": "Session registered",
            "sessionId": registered.session_id,
            "pendingResults": registered.pending_results,
        }
    )


async def acknowledge_events(request: Request) -> Response:
    rt = runtime_of(request)
    conversation_id = require_id(request.path_params["conversation_id"])
    task_ids = decode(EventsAck, await read_json(request, rt.settings.max_body_bytes)).taskIds
    acknowledged = await rt.delivery.acknowledge(conversation_id, task_ids)
    return JSONResponse({"success": True, "acknowledged": acknowledged})


async def events_stream(request: Request) -> Response:
    rt = runtime_of(request)
    conversation_id = require_id(request.path_params["conversation_id"])
    last_event_id = valid_last_event_id(
        request.headers.get("last-event-id") or query_of(request.query_params).get("lastEventId")
    )
    await rt.conversations.get(conversation_id)  # 404 for an unknown conversation
    log.info(events.SSE_CONNECTED, conversationId=conversation_id, resume=last_event_id is not None)

    async def stream() -> AsyncIterator[bytes]:
        metrics.SSE_SUBSCRIBERS.inc()
        yield b"retry: %d\n\n" % SSE_RETRY_MS
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
