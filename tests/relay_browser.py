"""What the web frontend does with the relay channel (README "Delivery"), as a test client.

`RelayBrowser` holds `GET /agent-conversations/api/{id}/events` open, reconnects with `Last-Event-ID`
whenever the stream ends or fails (as EventSource does, with a short retry delay here), acknowledges
every result it receives (`POST .../events/ack`, retrying acknowledgements that failed) and counts
what it received per task id (= ElevenLabs `context_id`). Every non-200 answer it gets is recorded
with its content type, so a test can check that an outage or a restart only ever showed 503 JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.helpers import BROWSER_IDENTITY


@dataclass
class Refusal:
    """A non-200 answer (or a transport error: status 0) the browser got."""

    what: str
    status: int
    content_type: str
    body: str
    at: float = field(default_factory=time.monotonic)

    @property
    def json_error(self) -> bool:
        """A JSON error body `{"success": false, "error": ...}`."""
        if not self.content_type.startswith("application/json"):
            return False
        try:
            body = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return False
        return isinstance(body, dict) and body.get("success") is False and bool(body.get("error"))


class RelayBrowser:
    def __init__(
        self,
        base_url: str,
        conversation_id: str,
        *,
        retry: float = 0.2,
        acknowledge: bool = True,
        max_seconds: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.conversation_id = conversation_id
        self.retry = retry
        self.acknowledge = acknowledge
        self.deadline = time.monotonic() + max_seconds  # every loop here is bounded in time
        self.received: Counter[str] = Counter()  # task id -> times received
        self.last_event_id: str | None = None
        self.connects = 0  # streams opened (200)
        self.stream_ends: list[str] = []  # why each stream ended
        self.refusals: list[Refusal] = []
        self.unacked: set[str] = set()
        self.acked: set[str] = set()
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def events_path(self) -> str:
        return f"/agent-conversations/api/{self.conversation_id}/events"

    def start(self) -> RelayBrowser:
        self._tasks = [asyncio.create_task(self._read_loop())]
        if self.acknowledge:
            self._tasks.append(asyncio.create_task(self._ack_loop()))
        return self

    async def connected(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_for(self, task_ids: set[str], timeout: float, acked: bool = True) -> set[str]:
        """Wait until every task id was received (and acknowledged); return those still missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = {t for t in task_ids if t not in self.received or (acked and t not in self.acked)}
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.05)

    def _stopped(self) -> bool:
        return self._stop.is_set() or time.monotonic() > self.deadline

    async def _read_loop(self) -> None:
        timeout = httpx.Timeout(5.0, read=15.0)
        async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=self.base_url, timeout=timeout) as client:
            while not self._stopped():
                headers = {"Accept": "text/event-stream"}
                if self.last_event_id is not None:
                    headers["Last-Event-ID"] = self.last_event_id
                try:
                    async with client.stream("GET", self.events_path, headers=headers) as response:
                        if response.status_code != 200:
                            body = (await response.aread()).decode(errors="replace")
                            content_type = response.headers.get("content-type", "")
                            self.refusals.append(Refusal("GET events", response.status_code, content_type, body[:300]))
                        else:
                            self.connects += 1
                            self._connected.set()
                            await self._read_events(response)
                            self.stream_ends.append("closed by the server")
                except httpx.HTTPError as exc:
                    self.stream_ends.append(type(exc).__name__)
                await asyncio.sleep(self.retry)

    async def _read_events(self, response: httpx.Response) -> None:
        event_id: str | None = None
        data: list[str] = []
        async for line in response.aiter_lines():
            if line == "":
                if data:
                    payload: dict[str, Any] = orjson.loads("\n".join(data))
                    task_id = payload["taskId"]
                    self.received[task_id] += 1
                    if event_id is not None:
                        self.last_event_id = event_id
                    if task_id not in self.acked:
                        self.unacked.add(task_id)
                event_id, data = None, []
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "id":
                event_id = value
            elif key == "data":
                data.append(value)

    async def _ack_loop(self) -> None:
        async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=self.base_url, timeout=5.0) as client:
            while not self._stopped():
                batch = sorted(self.unacked)[:100]
                if batch:
                    try:
                        response = await client.post(f"{self.events_path}/ack", json={"taskIds": batch})
                    except httpx.HTTPError as exc:
                        self.refusals.append(Refusal("POST ack", 0, "", type(exc).__name__))
                    else:
                        if response.status_code == 200:
                            self.unacked.difference_update(batch)
                            self.acked.update(batch)
                        else:
                            content_type = response.headers.get("content-type", "")
                            self.refusals.append(Refusal("POST ack", response.status_code, content_type, response.text))
                await asyncio.sleep(0.05)
