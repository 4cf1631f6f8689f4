"""A loopback cursor-runner: `POST /cursor/execute/async`, then a real callback POST.

It behaves as cursor-runner does (SPEC §4): checks `X-Webhook-Secret`, answers
`{success, message, requestId, timestamp}`, and later POSTs the callback once, with the `?secret=`
of the callback URL stripped and sent back as `X-Webhook-Secret` and `X-Cursor-Runner-Secret`.
Attributes switch it into the failure modes tests need (slow, 401, 500, crash bodies, ...).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CallbackKind = Literal["completion", "nonzero_exit", "validation_error", "crash", "none"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def callback_body(kind: CallbackKind, request_id: str, prompt: str = "") -> dict[str, Any]:
    """The body cursor-runner POSTs for each outcome."""
    if kind == "completion":
        return {
            "success": True,
            "requestId": request_id,
            "repository": "demo-repo",
            "command": ["cursor-agent", "--print", prompt[:40]],
            "output": f"Done: {prompt[:80]}\nAll tests pass.",
            "error": None,
            "exitCode": 0,
            "duration": "1234ms",
            "timestamp": _now(),
            "branchName": "main",
        }
    if kind == "nonzero_exit":
        return {
            "success": True,
            "requestId": request_id,
            "repository": "demo-repo",
            "command": ["cursor-agent", "--print"],
            "output": "partial output",
            "error": "fatal: tests failed",
            "exitCode": 2,
            "duration": "987ms",
            "timestamp": _now(),
        }
    if kind == "validation_error":
        return {
            "success": False,
            "requestId": request_id,
            "error": "repository 'nope' not found",
            "exitCode": 1,
            "output": "",
            "timestamp": _now(),
        }
    return {
        "success": False,
        "requestId": request_id,
        "error": "cursor-agent crashed: out of memory",
        "timestamp": _now(),
    }


@dataclass
class FakeCursorRunner:
    secret: str | None = None
    own_webhook_secret: str = "cursor-runner-shared-secret"
    answer_status: int = 200
    answer_delay: float = 0.0
    callback_kind: CallbackKind = "completion"
    callback_delay: float = 0.05
    callback_before_answer: bool = False
    callback_repeats: int = 1
    health_status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/cursor/execute/async", self._execute, methods=["POST"]),
                Route("/health", self._health),
            ]
        )

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok" if self.health_status == 200 else "error"}, status_code=self.health_status)

    async def _execute(self, request: Request) -> Response:
        if self.secret is not None and request.headers.get("x-webhook-secret") != self.secret:
            return JSONResponse({"success": False, "error": "Unauthorized"}, status_code=401)
        body = await request.json()
        self.received.append(body)
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        if self.answer_status != 200:
            return JSONResponse({"success": False, "error": "Internal error"}, status_code=self.answer_status)
        if self.callback_kind != "none":
            if self.callback_before_answer:
                await self._send_callbacks(body, delay=0)
            else:
                task = asyncio.create_task(self._send_callbacks(body, self.callback_delay))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return JSONResponse(
            {"success": True, "message": "Request queued", "requestId": body["id"], "timestamp": _now()}
        )

    async def _send_callbacks(self, request: dict[str, Any], delay: float) -> None:
        await asyncio.sleep(delay)
        url, secret = split_secret(request["callbackUrl"])
        secret = secret or self.own_webhook_secret
        headers = {"X-Webhook-Secret": secret, "X-Cursor-Runner-Secret": secret}
        body = callback_body(self.callback_kind, request["id"], request.get("prompt", ""))
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(self.callback_repeats):
                try:
                    response = await client.post(url, json=body, headers=headers)
                    self.callbacks.append((response.status_code, response.json()))
                except httpx.HTTPError as exc:
                    self.callbacks.append((0, {"error": type(exc).__name__}))

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until every callback this runner still had to send has been answered."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_callbacks(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.callbacks) < count:
                await asyncio.sleep(0.01)


def split_secret(callback_url: str) -> tuple[str, str | None]:
    """Strip `secret` from a callback URL, as cursor-runner does before calling it."""
    parts = urlsplit(callback_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret = next((v for k, v in query if k == "secret"), None)
    rest = urlencode([(k, v) for k, v in query if k != "secret"])
    return urlunsplit(parts._replace(query=rest)), secret
