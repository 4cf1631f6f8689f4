"""ElevenLabs: signed conversation URLs (through the official SDK) and contextual-update pushes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import websockets
from elevenlabs.client import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError

SIGNED_URL_VALIDITY = timedelta(minutes=15)


class UpstreamError(Exception):
    """ElevenLabs answered badly or not at all; `status` is its HTTP status if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SignedUrl:
    url: str
    expires_at: datetime


class ElevenLabsClient:
    def __init__(self, api_url: str, api_key: str, timeout: float) -> None:
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout))
        self._sdk = AsyncElevenLabs(api_key=api_key, base_url=api_url.rstrip("/"), httpx_client=self._http)
        # The SDK imports its sub-clients on first use (~0.6 s): pay that at startup, not inside the
        # first browser request's timeout.
        self._conversations = self._sdk.conversational_ai.conversations
        self.timeout = timeout

    async def aclose(self) -> None:
        await self._http.aclose()

    async def signed_url(self, agent_id: str) -> SignedUrl:
        issued = datetime.now(UTC)
        try:
            async with asyncio.timeout(self.timeout):
                # No SDK retries: the browser is waiting, and it can retry itself.
                reply = await self._conversations.get_signed_url(agent_id=agent_id, request_options={"max_retries": 0})
        except ApiError as exc:
            raise UpstreamError(f"ElevenLabs answered HTTP {exc.status_code}", exc.status_code) from None
        except TimeoutError:
            raise UpstreamError("ElevenLabs did not answer in time") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"ElevenLabs request failed ({type(exc).__name__})") from None
        except (ValueError, TypeError):
            # The SDK could not read the answer (not JSON, not an object): ElevenLabs answered badly.
            raise UpstreamError("ElevenLabs answered with an unreadable body", 200) from None
        if not isinstance(getattr(reply, "signed_url", None), str) or not reply.signed_url:
            raise UpstreamError("ElevenLabs returned no signed_url", 200)
        return SignedUrl(reply.signed_url, issued + SIGNED_URL_VALIDITY)


ACK_TYPE = "contextual_update_ack"


class PushNotAcknowledged(Exception):
    """The bridge did not confirm the frame."""


async def push_contextual_update(push_url: str, text: str, context_id: str, timeout: float) -> None:
    """Send one `contextual_update` frame to a server-side bridge socket and wait for its confirmation.

    A written frame, or even a completed close handshake, only proves the peer's socket layer got it;
    the bridge confirms it forwarded the update with `{"type": "contextual_update_ack",
    "context_id": <same id>}`. Raises on any failure, including no confirmation within `timeout`.
    """
    frame = orjson.dumps({"type": "contextual_update", "text": text, "context_id": context_id}).decode()
    async with (
        asyncio.timeout(timeout),
        websockets.connect(push_url, open_timeout=timeout, close_timeout=timeout, max_size=2**16) as ws,
    ):
        await ws.send(frame)
        async for message in ws:
            try:
                reply = orjson.loads(message)
            except orjson.JSONDecodeError:
                continue
            if isinstance(reply, dict) and reply.get("type") == ACK_TYPE and reply.get("context_id") == context_id:
                return
        raise PushNotAcknowledged("the bridge closed the socket without confirming the update")
