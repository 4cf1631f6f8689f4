"""http/protocol.py on a real uvicorn server over loopback: one TCP segment per response (uvicorn's own
protocol sends two, which shows the test can fail), an answer ended by `Connection: close` arrives
whole before the close, and a WebSocket upgrade on the same server still works."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.sync.client import connect

from elevenlabs_agent.http.protocol import HttpProtocol
from elevenlabs_agent.redis.server import free_port

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, the data segments a socket has received (Linux 4.6+).
DATA_SEGS_IN = 152
BODY = b'{"ok":true}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "echo " + message["text"]})
        await send({"type": "websocket.close", "code": 1000})
        return
    if scope["type"] != "http":
        return
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


@contextmanager
def serving(protocol: type) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(BODY):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def data_segments_received(protocol: type, requests: int, connection: str = "keep-alive") -> int:
    with serving(protocol) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(requests):
            sock.sendall(f"GET /x HTTP/1.1\r\nHost: t\r\nConnection: {connection}\r\n\r\n".encode())
            assert read_response(sock).startswith(b"HTTP/1.1 200 OK\r\n")
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return int(struct.unpack_from("I", info, DATA_SEGS_IN)[0])


def test_each_response_is_one_segment_where_uvicorn_sends_two() -> None:
    assert data_segments_received(HttpProtocol, 20) == 20
    assert data_segments_received(HttpToolsProtocol, 20) == 40


def test_connection_close_sends_the_whole_answer_then_closes() -> None:
    with serving(HttpProtocol) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        sock.settimeout(5)
        data = read_response(sock)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" in data.lower()
        assert sock.recv(1) == b""


@pytest.mark.parametrize("messages", [1, 3])
def test_websocket_upgrade_on_the_one_write_protocol(messages: int) -> None:
    with serving(HttpProtocol) as port:
        for n in range(messages):
            with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
                ws.send(f"hi {n}")
                assert ws.recv(timeout=5) == f"echo hi {n}"
