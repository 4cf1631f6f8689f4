"""A small HTTP/1.1 client for the call on the webhook's critical path (a POST to cursor-runner).

aiohttp cost about 200 us of CPU per call on the 2-core benchmark machine (its request and response
objects, header multidicts, payload registry, tracing hooks and timer contexts), a quarter of a tool
call. This sends one prepared request on a kept-alive connection (TCP or TLS) and reads the answer
with httptools (uvicorn's parser), under one timer per call. Nothing else: no redirects, no
compression, no proxies, no cookies — cursor-runner answers a JSON POST with JSON.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools


class HttpError(Exception):
    """No complete HTTP answer: the connection was refused, reset or closed early, or spoke no HTTP."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection, one request at a time; the answer resolves `waiter`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.body: list[bytes] = []
        self.headers_done = False
        self.delimited = False  # Content-Length or chunked: the end of the body is known without a close
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing was asked: this connection can no longer be trusted
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(HttpError(f"not an HTTP answer ({exc})"))

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost ends the answer or fails it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None:
            if self.headers_done and not self.delimited:
                self._complete()  # a body that ends with the connection
            else:
                self.fail(HttpError("the server closed the connection before a complete answer"))

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.close()
        self._complete()

    def _complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self.parser.get_status_code(), b"".join(self.body)))

    def ask(self, request: bytes, waiter: asyncio.Future[Answer]) -> None:
        assert self.transport is not None
        self.waiter = waiter
        self.body = []
        self.headers_done = self.delimited = False
        self.transport.write(request)

    def fail(self, error: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Http1Client:
    """Requests to one origin (`http://` or `https://`), at most `limit` connections at once, idle ones
    kept for `keepalive` seconds. A call that has no complete answer within `timeout` (connecting
    included) raises TimeoutError; no answer at all, HttpError or OSError."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float, limit: int = 200) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.base_path = url.path.rstrip("/")
        self.tls = ssl.create_default_context() if url.scheme == "https" else None
        if any(c in f"{k}{v}" for k, v in headers.items() for c in "\r\n"):
            raise ValueError("header names and values cannot hold line breaks")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = self.port == (443 if self.tls else 80)
        lines = [f"Host: {host}" + ("" if default_port else f":{self.port}")]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.fixed_headers = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.timeout = timeout
        self.keepalive = 30.0
        self.idle: deque[_Connection] = deque()
        self.slots = asyncio.Semaphore(limit)
        self.busy: set[_Connection] = set()

    def _request(self, method: str, path: str, body: bytes, content_type: str | None) -> bytes:
        head = f"{method} {self.base_path}{path} HTTP/1.1\r\n".encode("latin-1") + self.fixed_headers
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n".encode("latin-1")
        if body or method == "POST":
            head += b"Content-Length: %d\r\n" % len(body)
        return head + b"\r\n" + body

    async def post_json(self, path: str, body: bytes) -> Answer:
        return await self.call(self._request("POST", path, body, "application/json"))

    async def get(self, path: str) -> Answer:
        return await self.call(self._request("GET", path, b"", None))

    async def call(self, request: bytes) -> Answer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        async with self.slots:
            connection = self._idle_connection()
            if connection is None:
                async with asyncio.timeout_at(deadline):
                    _, connection = await loop.create_connection(
                        _Connection, self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
                    )
            waiter: asyncio.Future[Answer] = loop.create_future()
            timer = loop.call_at(deadline, _expire, connection, waiter)
            self.busy.add(connection)
            try:
                connection.ask(request, waiter)
                answer = await waiter
            except BaseException:
                connection.close()  # cancelled or failed mid-answer: the connection's state is unknown
                raise
            finally:
                timer.cancel()
                self.busy.discard(connection)
            if not connection.closed:
                connection.idle_since = time.monotonic()
                self.idle.append(connection)
            return answer

    def _idle_connection(self) -> _Connection | None:
        """The most recently used idle connection still open (a server closes the oldest first)."""
        stale = time.monotonic() - self.keepalive
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and connection.idle_since > stale:
                return connection
            connection.close()
        return None

    async def aclose(self) -> None:
        for connection in (*self.idle, *self.busy):
            connection.close()
        self.idle.clear()


def _expire(connection: _Connection, waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
    connection.close()
