"""A loopback ElevenLabs: the signed-URL API, the Conversational AI WebSocket, and a push bridge.

- `GET /v1/convai/conversation/get-signed-url?agent_id=` (header `xi-api-key`) -> `{"signed_url"}`: a
  `ws://` URL to this server with a `conversation_signature` it remembers for 15 minutes.
- `WS /v1/convai/conversation?agent_id=[&conversation_signature=]`: a conversation as the browser
  holds it, speaking the protocol of the official SDK (`@elevenlabs/client`, whose frames are the
  AsyncAPI contracts of `@elevenlabs/types`) well enough for the real SDK to connect and stay connected:
  - the handshake: a signature it did not issue (or that expired) is refused (HTTP 403); the `convai`
    subprotocol the SDK asks for is selected (a browser fails a handshake that drops it);
  - the client sends `conversation_initiation_client_data` (overrides, dynamic variables, its
    `source_info`) on open; we answer `conversation_initiation_metadata` with the conversation id and
    the audio formats. With `require_initiation` the answer waits for that frame and anything else
    first is a protocol error (close 1008), as the SDK does it; without it (the default, for the
    suite's raw socket clients) the metadata is sent at once and the initiation is optional;
  - `ping` every `ping_interval` seconds; the client must answer `pong` with the same `event_id`;
  - `user_message` gets an `agent_response`, as the agent would answer it; `contextual_update` gets
    nothing (it informs the agent silently); `user_audio_chunk` frames (a live microphone) are counted.
  Every client frame is recorded (audio chunks only counted) with its arrival time
  (`time.perf_counter()`), and anything outside the contract is listed in `protocol_errors`.
- `WS /push/{conversation_id}`: the server-side bridge a registration may name as `pushUrl`; every
  frame it accepts is forwarded into that conversation's record, as a real bridge would forward it
  into the live ElevenLabs socket, and confirmed with `{"type":"contextual_update_ack","context_id"}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

PushMode = Literal["accept", "reject", "hang"]
SUBPROTOCOL = "convai"
SIGNED_URL_VALIDITY = 15 * 60.0
AUDIO_FORMATS = frozenset({"pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000"})
# What a client may send (the `ClientToOrchestratorEvent`s of @elevenlabs/types), besides audio chunks.
CLIENT_FRAME_TYPES = frozenset(
    {
        "conversation_initiation_client_data",
        "contextual_update",
        "user_message",
        "user_activity",
        "pong",
        "feedback",
        "client_tool_result",
        "mcp_tool_approval_result",
        "multimodal_message",
    }
)


@dataclass
class SimConversation:
    conversation_id: str
    agent_id: str
    query: dict[str, str] = field(default_factory=dict)  # of the connection URL (the SDK adds source, version)
    subprotocol: str | None = None
    initiation: dict[str, Any] | None = None  # the client's conversation_initiation_client_data
    frames: list[dict[str, Any]] = field(default_factory=list)  # every JSON frame but audio chunks
    frame_times: list[float] = field(default_factory=list)  # time.perf_counter() at arrival, per frame
    audio_chunks: int = 0
    audio_bytes: int = 0
    pings_sent: int = 0
    pongs: list[int] = field(default_factory=list)  # event ids the client answered
    protocol_errors: list[str] = field(default_factory=list)
    open: bool = True
    close_code: int | None = None
    _event_ids: int = 0

    def next_event_id(self) -> int:
        self._event_ids += 1
        return self._event_ids

    def of_type(self, frame_type: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == frame_type]

    def times_of(self, frame_type: str) -> list[float]:
        return [t for f, t in zip(self.frames, self.frame_times, strict=True) if f.get("type") == frame_type]

    @property
    def contextual_updates(self) -> list[dict[str, Any]]:
        return self.of_type("contextual_update")

    @property
    def user_messages(self) -> list[dict[str, Any]]:
        return self.of_type("user_message")

    @property
    def sdk(self) -> tuple[str, str] | None:
        """(source, version) the client named in its initiation's `source_info`, if any."""
        info = (self.initiation or {}).get("source_info")
        if isinstance(info, dict) and isinstance(info.get("source"), str) and isinstance(info.get("version"), str):
            return info["source"], info["version"]
        return None


@dataclass
class FakeElevenLabs:
    api_key: str = "sim-xi-api-key"
    signed_url_status: int = 200
    push_mode: PushMode = "accept"
    base_ws_url: str = ""  # set once the server listens, to build signed URLs
    require_initiation: bool = False
    initiation_timeout: float = 10.0
    ping_interval: float | None = None
    audio_format: str = "pcm_16000"
    conversations: dict[str, SimConversation] = field(default_factory=dict)
    conversation_opens: int = 0
    refused_handshakes: int = 0
    signed_url_requests: int = 0
    signatures: dict[str, float] = field(default_factory=dict)  # issued signature -> expiry (monotonic)

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
        self.signatures[signature] = time.monotonic() + SIGNED_URL_VALIDITY
        url = f"{self.base_ws_url}/v1/convai/conversation?agent_id={agent_id}&conversation_signature={signature}"
        return JSONResponse({"signed_url": url})

    # the conversation socket ------------------------------------------------------------------------

    async def _conversation(self, ws: WebSocket) -> None:
        signature = ws.query_params.get("conversation_signature")
        if signature is not None and self.signatures.get(signature, 0.0) < time.monotonic():
            self.refused_handshakes += 1
            await ws.close(code=1008)  # before accepting: the HTTP upgrade is refused (403)
            return
        offered: list[str] = ws.scope.get("subprotocols") or []
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
        await ws.accept(subprotocol=subprotocol)
        self.conversation_opens += 1
        conversation = SimConversation(
            "conv_" + secrets.token_hex(8),
            ws.query_params.get("agent_id", ""),
            query=dict(ws.query_params),
            subprotocol=subprotocol,
        )
        self.conversations[conversation.conversation_id] = conversation
        send_lock = asyncio.Lock()

        async def send(frame: dict[str, Any]) -> None:
            async with send_lock:
                await ws.send_text(orjson.dumps(frame).decode())

        pinger: asyncio.Task[None] | None = None
        try:
            if self.require_initiation:
                async with asyncio.timeout(self.initiation_timeout):
                    first = await self._receive(ws, conversation)
                if first is None or first.get("type") != "conversation_initiation_client_data":
                    conversation.protocol_errors.append(f"first frame is not the initiation: {first!r:.200}")
                    await ws.close(code=1008, reason="expected conversation_initiation_client_data")
                    return
            await send(
                {
                    "type": "conversation_initiation_metadata",
                    "conversation_initiation_metadata_event": {
                        "conversation_id": conversation.conversation_id,
                        "agent_output_audio_format": self.audio_format,
                        "user_input_audio_format": self.audio_format,
                    },
                }
            )
            if self.ping_interval:
                pinger = asyncio.create_task(self._ping(conversation, send, self.ping_interval))
            while True:
                frame = await self._receive(ws, conversation)
                if frame is not None and frame.get("type") == "user_message":
                    await send(self._agent_response(conversation, f"You said: {frame.get('text', '')}"))
        except WebSocketDisconnect as exc:
            conversation.close_code = exc.code
        except TimeoutError:
            conversation.protocol_errors.append("no conversation_initiation_client_data in time")
            with contextlib.suppress(Exception):
                await ws.close(code=1008, reason="no conversation_initiation_client_data")
        finally:
            conversation.open = False
            if pinger is not None:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger

    async def _receive(self, ws: WebSocket, conversation: SimConversation) -> dict[str, Any] | None:
        """The next client frame, recorded and checked; None for a frame that is not a JSON object."""
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        received = time.perf_counter()
        raw = message.get("text")
        if raw is None:
            conversation.protocol_errors.append("binary frame")
            return None
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            conversation.protocol_errors.append(f"not JSON: {raw[:100]!r}")
            return None
        if not isinstance(frame, dict):
            conversation.protocol_errors.append(f"not a JSON object: {raw[:100]!r}")
            return None
        if "user_audio_chunk" in frame and "type" not in frame:
            self._audio(conversation, frame["user_audio_chunk"])
            return frame
        conversation.frames.append(frame)
        conversation.frame_times.append(received)
        if problem := self._check(conversation, frame):
            conversation.protocol_errors.append(f"{problem}: {raw[:200]}")
        return frame

    def _check(self, conversation: SimConversation, frame: dict[str, Any]) -> str | None:
        """What is wrong with a client frame (per the AsyncAPI contract), or None."""
        kind = frame.get("type")
        if kind not in CLIENT_FRAME_TYPES:
            return "unknown frame type"
        if kind == "conversation_initiation_client_data":
            if conversation.initiation is not None:
                return "a second initiation"
            conversation.initiation = frame
        elif kind == "contextual_update":
            if not isinstance(frame.get("text"), str):
                return "contextual_update without text"
            if "context_id" in frame and not isinstance(frame["context_id"], str):
                return "context_id is not a string"
        elif kind == "user_message":
            if not isinstance(frame.get("text", ""), str):
                return "user_message text is not a string"
        elif kind == "pong":
            event_id = frame.get("event_id")
            if not isinstance(event_id, int) or not 0 < event_id <= conversation.pings_sent:
                return "pong for no ping we sent"
            conversation.pongs.append(event_id)
        return None

    @staticmethod
    def _audio(conversation: SimConversation, chunk: Any) -> None:
        try:
            conversation.audio_bytes += len(base64.b64decode(chunk, validate=True))
        except (TypeError, ValueError, binascii.Error):
            conversation.protocol_errors.append("user_audio_chunk is not base64")
            return
        conversation.audio_chunks += 1

    @staticmethod
    def _agent_response(conversation: SimConversation, text: str) -> dict[str, Any]:
        return {
            "type": "agent_response",
            "agent_response_event": {"agent_response": text, "event_id": conversation.next_event_id()},
        }

    @staticmethod
    async def _ping(conversation: SimConversation, send: Any, interval: float) -> None:
        with contextlib.suppress(Exception):  # the socket closed under us: the conversation is over
            while True:
                await asyncio.sleep(interval)
                conversation.pings_sent += 1
                await send({"type": "ping", "ping_event": {"event_id": conversation.pings_sent, "ping_ms": 1}})

    # the push bridge --------------------------------------------------------------------------------

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
                conversation.frame_times.append(time.perf_counter())
                if frame.get("type") == "contextual_update":
                    await ws.send_text(
                        orjson.dumps({"type": "contextual_update_ack", "context_id": frame.get("context_id")}).decode()
                    )
        except WebSocketDisconnect:
            pass

    # waiting ----------------------------------------------------------------------------------------

    async def wait_update(self, conversation_id: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        return await self.wait_frames(conversation_id, "contextual_update", count, timeout)

    async def wait_frames(
        self, conversation_id: str, frame_type: str, count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The conversation's frames of `frame_type`, once there are at least `count` of them."""
        async with asyncio.timeout(timeout):
            while True:
                conversation = self.conversations.get(conversation_id)
                if conversation and len(frames := conversation.of_type(frame_type)) >= count:
                    return frames
                await asyncio.sleep(0.005)
