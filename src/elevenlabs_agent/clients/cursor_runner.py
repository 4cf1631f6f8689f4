"""cursor-runner client: `POST /cursor/execute/async`, which answers at once and calls back later."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class DispatchResult:
    ok: bool
    reason: str  # "accepted" | "unauthorized" | "rejected" | "timeout" | "unreachable" | "bad_response"
    status_code: int | None = None
    detail: str = ""


class CursorRunnerClient:
    def __init__(
        self,
        base_url: str,
        secret: str | None,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"X-Webhook-Secret": secret} if secret else {}
        self.timeout = timeout
        # One pooled keep-alive client: a TCP (and TLS) handshake per webhook would dominate latency.
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def execute_async(self, payload: dict[str, Any]) -> DispatchResult:
        try:
            # httpx's timeout bounds each phase; this bounds the whole call, slow trickles included.
            async with asyncio.timeout(self.timeout):
                response = await self._http.post("/cursor/execute/async", json=payload)
        except (TimeoutError, httpx.TimeoutException):
            return DispatchResult(False, "timeout", detail="cursor-runner did not answer in time")
        except httpx.HTTPError as exc:
            return DispatchResult(False, "unreachable", detail=type(exc).__name__)
        if response.status_code == 401:
            return DispatchResult(False, "unauthorized", 401, "cursor-runner rejected our secret")
        if response.status_code >= 300:
            return DispatchResult(False, "rejected", response.status_code, _error_text(response))
        try:
            body = response.json()
        except ValueError:
            return DispatchResult(False, "bad_response", response.status_code, "response was not JSON")
        if not isinstance(body, dict) or body.get("success") is False:
            return DispatchResult(False, "rejected", response.status_code, _error_text(response))
        return DispatchResult(True, "accepted", response.status_code)

    async def probe(self) -> tuple[bool, str]:
        """Is cursor-runner reachable? Any HTTP answer counts; only transport errors do not."""
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._http.get("/health")
        except TimeoutError:
            return False, "timeout"
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        return True, f"HTTP {response.status_code}"


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return error[:200]
    return f"HTTP {response.status_code}"
