"""A minimal keep-alive HTTP/1.1 client on asyncio streams, for the benchmark client processes.

httpx costs several times the CPU per request; these clients share 2 cores with the service they
measure, so they speak just enough HTTP/1.1 (Content-Length or chunked bodies) and nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import orjson

# What a failed request raises: socket errors, a peer that closed mid-reply (IncompleteReadError is an
# EOFError), timeouts, unparsable replies.
ERRORS = (OSError, EOFError, TimeoutError, ValueError)


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p99/p99.9 (nearest rank) in ms of latencies given in seconds."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999)}


def cpu_percent(cpu_before: float, wall_before: float) -> float:
    return round((time.process_time() - cpu_before) / max(1e-9, time.monotonic() - wall_before) * 100, 1)


async def open_loop(
    rate: float, count: int, pool: asyncio.Queue[Conn], send: Callable[[Conn, int, float], Coroutine[Any, Any, None]]
) -> float:
    """Run send(conn, i, due) for i < count, request i due at t0 + i/rate whatever happened to the
    earlier ones (open loop; `send` puts `conn` back in `pool`). A request waits for a free connection
    only when all are busy; latencies measured from `due` include that wait. Returns the worst lag (s)."""
    inflight: set[asyncio.Task[None]] = set()
    worst, t0 = 0.0, time.monotonic() + 0.01
    for i in range(count):
        due = t0 + i / rate
        if (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        conn = await pool.get()
        worst = max(worst, time.monotonic() - due)
        job = asyncio.create_task(send(conn, i, due))
        inflight.add(job)
        job.add_done_callback(inflight.discard)
    if inflight:
        await asyncio.wait(inflight)
    return worst


def conn_pool(base_url: str, size: int) -> asyncio.Queue[Conn]:
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(size):
        pool.put_nowait(Conn(base_url))
    return pool


class Conn:
    """One keep-alive connection; reconnects on the next request after an error."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    def _head(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        # Browser routes: the identity a loopback authenticating proxy would set (BROWSER_AUTH=proxy).
        lines.append("X-Forwarded-User: bench")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def request(
        self, method: str, path: str, json: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """(status, body); raises one of ERRORS on failure, after which the connection is dropped."""
        body = b"" if json is None else orjson.dumps(json)
        hdrs = {"Content-Type": "application/json", **(headers or {})} if json is not None else headers or {}
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._open()
                writer.write(self._head(method, path, hdrs, body))
                status, response_headers = await _read_head(reader)
                if response_headers.get("transfer-encoding") == "chunked":
                    data = b"".join([chunk async for chunk in _chunks(reader)])
                else:
                    data = await reader.readexactly(int(response_headers.get("content-length", "0")))
                if response_headers.get("connection") == "close":
                    self.close()
                return status, data
        except BaseException:
            self.close()
            raise

    async def stream(self, path: str, headers: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        """GET a chunked response (SSE) on this connection; yields body chunks as they come."""
        async with asyncio.timeout(self.timeout):
            reader, writer = await self._open()
            writer.write(self._head("GET", path, {"Accept": "text/event-stream", **(headers or {})}, b""))
            status, _ = await _read_head(reader)
        if status != 200:
            raise ValueError(f"GET {path}: {status}")
        async for chunk in _chunks(reader):
            yield chunk


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    return status, headers


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]
