"""Live updates over a WebSocket (SPEC §3.1) and the browser half of the relay, relay.js (SPEC §5.4)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from elevenlabs_agent import __version__, events, metrics
from elevenlabs_agent.errors import InvalidInput, NotFound, UpgradeRequired
from elevenlabs_agent.http.routes.base import query_of
from elevenlabs_agent.limits import WEB_ASSET_MAX_AGE_SECONDS
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.runtime import Runtime
from elevenlabs_agent.schemas.conversations import RESERVED_CONVERSATION_IDS, require_id
from elevenlabs_agent.services import live

log = get_logger()
# WebSocket close codes: 1001 going away (the instance drains; browsers reconnect elsewhere), 1008
# policy (a malformed id), 1013 try again later (Redis unavailable), 4404 no such conversation.
WS_GOING_AWAY = 1001
WS_NOT_FOUND = 4404
WS_TRY_AGAIN = 1013


@dataclass(frozen=True)
class WebAsset:
    """A file of `elevenlabs_agent/web/` (package data), served as is: no build step, no data in it."""

    body: bytes
    media_type: str
    etag: str
    headers: dict[str, str]


# Cached for a while, then revalidated by ETag.
WEB_ASSET_CACHE_CONTROL = f"public, max-age={WEB_ASSET_MAX_AGE_SECONDS}"


def web_asset(name: str, media_type: str, **headers: str) -> WebAsset:
    body = (resources.files("elevenlabs_agent") / "web" / name).read_bytes()
    etag = f'"{__version__}-{hashlib.sha256(body).hexdigest()[:16]}"'
    return WebAsset(body, media_type, etag, headers)


WEB_ASSETS = {
    "/agent-conversations/relay.js": web_asset(
        "relay.js", "text/javascript; charset=utf-8", **{"X-TypeScript-Types": "./relay.d.ts"}
    ),
    "/agent-conversations/relay.d.ts": web_asset("relay.d.ts", "application/typescript; charset=utf-8"),
}


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def serve_web_asset(asset: WebAsset) -> Callable[[Request], Awaitable[Response]]:
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


async def conversation_updates(websocket: WebSocket) -> None:
    """Live updates of one conversation (SPEC §3.1): a snapshot, then the whole conversation again on
    every change made by any instance (services/live.py). Origin and the feature flag are checked at
    the edge (EdgeMiddleware) before this runs."""
    rt: Runtime = websocket.app.state.runtime
    await websocket.accept()
    try:
        conversation_id = require_id(query_of(websocket.query_params).get("conversationId", ""), "conversationId")
    except InvalidInput as exc:  # the same rules as the plain-HTTP answer, as a frame and a close
        metrics.WEBSOCKET_CONNECTIONS.labels("invalid_id").inc()
        await _refuse(websocket, websocket.query_params.get("conversationId", ""), str(exc), 1008)
        return
    structlog.contextvars.bind_contextvars(conversationId=conversation_id)
    subscriber = rt.live.subscribe(conversation_id)
    try:
        await rt.live.before_snapshot(subscriber)
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
    conversation_id = require_id(query_of(request.query_params).get("conversationId", ""), "conversationId")
    if conversation_id in RESERVED_CONVERSATION_IDS:
        raise InvalidInput(f"conversationId {conversation_id!r} is reserved")
    raise UpgradeRequired("this endpoint is a WebSocket: connect with an Upgrade: websocket handshake")
