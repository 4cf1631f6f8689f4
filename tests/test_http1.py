"""clients/http1.py against a raw loopback server: what it sends, the answer shapes it reads
(Content-Length, chunked, ended by the close), connection reuse, and its bound on a call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from elevenlabs_agent.clients.http1 import Http1Client, HttpError

Answerer = Callable[[bytes], bytes | None]  # the request's bytes -> what to write back (None: nothing)


@asynccontextmanager
async def raw_server(answer: Answerer, close_after: bool = False) -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A server that reads one request at a time (headers, then Content-Length bytes) and writes
    `answer(request)`; yields its URL, the requests it read and one entry per connection."""
    requests: list[bytes] = []
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                request = head + await reader.readexactly(length)
                requests.append(request)
                reply = answer(request)
                if reply is None:
                    await asyncio.sleep(3600)
                    return
                writer.write(reply)
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/runner/", requests, connections
    finally:
        server.close()


def ok(body: bytes) -> Answerer:
    return lambda _: (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


async def test_posts_on_one_kept_alive_connection() -> None:
    async with raw_server(ok(b'{"success":true}')) as (url, requests, connections):
        client = Http1Client(url, {"X-Webhook-Secret": "s3cret"}, timeout=2.0)
        try:
            for _ in range(3):
                answer = await client.post_json("/cursor/execute/async", b'{"id":"t"}')
                assert (answer.status, answer.body) == (200, b'{"success":true}')
            assert (await client.get("/health")).status == 200
        finally:
            await client.aclose()
    assert len(connections) == 1
    head, _, body = requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /runner/cursor/execute/async HTTP/1.1"
    assert {b"X-Webhook-Secret: s3cret", b"Content-Type: application/json", b"Content-Length: 10"} <= set(lines)
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in lines)
    assert body == b'{"id":"t"}'
    assert requests[-1].startswith(b"GET /runner/health HTTP/1.1\r\n")


async def test_chunked_and_close_delimited_answers_are_read_whole() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab\r\n\r\n3\r\ncde\r\n0\r\n\r\n"
    async with raw_server(lambda _: chunked) as (url, _, _):
        client = Http1Client(url, {}, timeout=2.0)
        assert (await client.get("/x")).body == b"ab\r\ncde"
        await client.aclose()
    until_close = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\nno length"
    async with raw_server(lambda _: until_close, close_after=True) as (url, _, connections):
        client = Http1Client(url, {}, timeout=2.0)
        for _ in range(2):
            answer = await client.get("/x")
            assert (answer.status, answer.body) == (503, b"no length")
        await client.aclose()
    assert len(connections) == 2  # a closed connection is never reused


async def test_no_complete_answer_is_an_error_and_a_silent_server_a_timeout() -> None:
    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"
    async with raw_server(lambda _: truncated, close_after=True) as (url, _, _):
        client = Http1Client(url, {}, timeout=2.0)
        with pytest.raises(HttpError):
            await client.get("/x")
        await client.aclose()
    async with raw_server(lambda _: b"SSH-2.0-OpenSSH\r\n\r\n") as (url, _, _):
        client = Http1Client(url, {}, timeout=2.0)
        with pytest.raises(HttpError):
            await client.get("/x")
        await client.aclose()
    async with raw_server(lambda _: None) as (url, _, _):
        client = Http1Client(url, {}, timeout=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await client.get("/x")
        assert asyncio.get_running_loop().time() - started < 1.0
        await client.aclose()


def test_header_values_cannot_smuggle_lines() -> None:
    with pytest.raises(ValueError):
        Http1Client("http://127.0.0.1:1", {"X-Webhook-Secret": "a\r\nX-Other: b"}, timeout=1.0)
