"""cursor-runner client: `POST /cursor/execute/async`, which answers at once and calls back later.

Not httpx nor aiohttp: on the webhook's critical path httpx cost 6.4 ms of CPU per dispatch and
aiohttp about 0.2 ms, most of a tool call's own work; `http1` sends the one prepared request on a
kept-alive connection (bench/http_clients.py, same loopback runner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from elevenlabs_agent.clients.http1 import Http1Client, HttpError

EXECUTE_PATH = "/cursor/execute/async"
HEALTH_PATH = "/health"


@dataclass(frozen=True)
class DispatchResult:
    ok: bool
    reason: str  # "accepted" | "unauthorized" | "rejected" | "timeout" | "unreachable" | "bad_response"
    status_code: int | None = None
    detail: str = ""


# GET /health of cursor-runner: 2xx, another HTTP answer, no answer.
RunnerState = Literal["connected", "unhealthy", "disconnected"]


@dataclass(frozen=True)
class Probe:
    state: RunnerState
    detail: str


class CursorRunnerClient:
    def __init__(self, base_url: str, secret: str | None, timeout: float) -> None:
        # One pool of keep-alive connections (a TCP and TLS handshake per webhook would dominate
        # latency); every call, connecting and a slow trickle of the answer included, is bounded by
        # `timeout`.
        self._http = Http1Client(base_url, {"X-Webhook-Secret": secret} if secret else {}, timeout)
        self.timeout = timeout

    async def aclose(self) -> None:
        await self._http.aclose()

    async def execute_async(self, payload: dict[str, Any]) -> DispatchResult:
        try:
            answer = await self._http.post_json(EXECUTE_PATH, orjson.dumps(payload))
        except TimeoutError:
            return DispatchResult(False, "timeout", detail="cursor-runner did not answer in time")
        except (HttpError, OSError) as exc:
            return DispatchResult(False, "unreachable", detail=type(exc).__name__)
        status, raw = answer.status, answer.body
        if status == 401:
            return DispatchResult(False, "unauthorized", 401, "cursor-runner rejected our secret")
        if status >= 300:
            return DispatchResult(False, "rejected", status, _error_text(status, raw))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return DispatchResult(False, "bad_response", status, "response was not JSON")
        if not isinstance(body, dict):
            return DispatchResult(False, "bad_response", status, "response was not a JSON object")
        if body.get("success") is False:
            return DispatchResult(False, "rejected", status, _error_text(status, raw))
        if body.get("success") is not True:
            # Only `"success": true` (SPEC §4) says the task was queued; telling the user it started
            # on anything less would leave them waiting for a callback that may never come.
            return DispatchResult(False, "bad_response", status, "response did not say success: true")
        return DispatchResult(True, "accepted", status)

    async def probe(self) -> Probe:
        """GET /health: 2xx `connected`, any other HTTP answer `unhealthy`, no answer `disconnected`
        (the web front end's three values, SPEC §3.1)."""
        try:
            status = (await self._http.get(HEALTH_PATH)).status
        except TimeoutError:
            return Probe("disconnected", "timeout")
        except (HttpError, OSError) as exc:
            return Probe("disconnected", type(exc).__name__)
        return Probe("connected" if 200 <= status < 300 else "unhealthy", f"HTTP {status}")


def _error_text(status: int, raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"HTTP {status}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return error[:200]
    return f"HTTP {status}"
