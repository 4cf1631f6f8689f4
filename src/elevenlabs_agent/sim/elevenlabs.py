"""A loopback ElevenLabs: the signed-URL API, the conversation WebSocket, and a push bridge.

- `GET /v1/convai/conversation/get-signed-url?agent_id=` (header `xi-api-key`) -> `{"signed_url"}`.
- `WS /v1/convai/conversation?agent_id=&conversation_signature=`: a voice conversation as the browser
  holds it; sends `conversation_initiation_metadata` with its conversation id, records client frames.
- `WS /push/{conversation_id}`: the server-side bridge a registration may name as `pushUrl`; every
  frame it accepts is forwarded into that conversation's record, as a real bridge would forward it
  into the live ElevenLabs socket, and confirmed with `{"type":"contextual_update_ack","context_id"}`.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

PushMode = Literal["accept", "reject", "hang"]


@dataclass
class SimConversation:
    conversation_id: str
    agent_id: str
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def contextual_updates(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == "contextual_update"]


@dataclass
class FakeElevenLabs:
    api_key: str = "sim-xi-api-key"
    signed_url_status: int = 200
    push_mode: PushMode = "accept"
    base_ws_url: str = ""  # set once the server listens, to build signed URLs
    conversations: dict[str, SimConversation] = field(default_factory=dict)
    conversation_opens: int = 0
    signed_url_requests: int = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/convai/conversation/get-signed-url", self._signed_url),
                WebSocketRoute("/v1/convai/conversation", self._conversation),
                WebSocketRoute("/push/{conversation_id}", self._push),
            ]
        )

    async def _signed_url(self, request: Request) -> Response:
        self.signed_url_requests += 1
        if request.headers.get("xi-api-key") != self.api_key:
            return JSONResponse({"detail": {"status": "invalid_api_key"}}, status_code=401)
        if self.signed_url_status != 200:
            return JSONResponse({"detail": "upstream trouble"}, status_code=self.signed_url_status)
        agent_id = request.query_params.get("agent_id", "")
        signature = secrets.token_urlsafe(16)
        url = f"{self.base_ws_url}/v1/convai/conversation?agent_id={agent_id}&conversation_signature={signature}"
        return JSONResponse({"signed_url": url})

    async def _conversation(self, ws: WebSocket) -> None:
        await ws.accept()
        self.conversation_opens += 1
        conversation = SimConversation("conv_" + secrets.token_hex(8), ws.query_params.get("agent_id", ""))
        self.conversations[conversation.conversation_id] = conversation
        await ws.send_text(
            orjson.dumps(
                {
                    "type": "conversation_initiation_metadata",
                    "conversation_initiation_metadata_event": {"conversation_id": conversation.conversation_id},
                }
            ).decode()
        )
        try:
            while True:
                conversation.frames.append(orjson.loads(await ws.receive_text()))
        except WebSocketDisconnect:
            pass

    async def _push(self, ws: WebSocket) -> None:
        conversation = self.conversations.get(ws.path_params["conversation_id"])
        if conversation is None or self.push_mode == "reject":
            await ws.close(code=1011)
            return
        await ws.accept()
        if self.push_mode == "hang":  # accepts the socket, never reads from it
            await asyncio.sleep(3600)
        try:
            while True:
                frame = orjson.loads(await ws.receive_text())
                conversation.frames.append(frame)
                if frame.get("type") == "contextual_update":
                    await ws.send_text(
                        orjson.dumps({"type": "contextual_update_ack", "context_id": frame.get("context_id")}).decode()
                    )
        except WebSocketDisconnect:
            pass

    async def wait_update(self, conversation_id: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while True:
                conversation = self.conversations.get(conversation_id)
                if conversation and len(conversation.contextual_updates) >= count:
                    return conversation.contextual_updates
                await asyncio.sleep(0.01)
