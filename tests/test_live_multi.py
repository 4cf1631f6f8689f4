"""Live-update WebSockets across real `serve` processes (issue 10): a change stored by instance B
reaches a socket held by instance A, a drain closes sockets with 1001, a silent peer is dropped by
ping/pong, and one instance holds 1,000 idle sockets with bounded memory.

Everything on loopback: the suite's redis-server, the instances as subprocesses (tests/serve_proc.py),
the loopback cursor-runner in this test's event loop, real WebSocket clients (`websockets`). Figures
are printed (`pytest -s`); bench/live_updates.py measures them at larger counts.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from elevenlabs_agent.redis.server import RedisServer
from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner, callback_body, split_secret
from elevenlabs_agent.sim.server import LocalServer
from tests.conftest import eventually
from tests.helpers import BROWSER_IDENTITY, FRAME_TIMEOUT, connect_ws, next_frame
from tests.serve_proc import ServeProcess, ServeProcesses

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "live-webhook-secret-0123456789"
RUNNER_SECRET = "live-runner-secret-0123456789"
API = "/agent-conversations/api"
IDLE_SOCKETS = 1_000


SERVE_ENV = {
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "CURSOR_RUNNER_SECRET": RUNNER_SECRET,
    "LOG_LEVEL": "warning",
    "DRAIN_SECONDS": "0.5",
    "SHUTDOWN_TIMEOUT_SECONDS": "5",
}


def ws_url(service: ServeProcess, conversation_id: str) -> str:
    return f"ws://127.0.0.1:{service.port}{API}/ws?conversationId={conversation_id}"


async def metric(service: ServeProcess, name: str) -> float:
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_callback_stored_by_instance_b_reaches_a_socket_on_instance_a(
    serve_procs: ServeProcesses, redis_server: RedisServer, redis: Any
) -> None:
    runner = FakeCursorRunner(secret=RUNNER_SECRET, callback_kind="none")
    async with LocalServer(runner.app()) as runner_server:
        env = {"REDIS_URL": redis_server.url, "CURSOR_RUNNER_URL": runner_server.url}
        a, b = serve_procs.new(**env), serve_procs.new(**env)
        await asyncio.gather(a.start(path="/ready"), b.start(path="/ready"))
        conversation_id = "conv-live-two"
        async with (
            httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=a.url, timeout=10) as on_a,
            httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=b.url, timeout=10) as on_b,
            connect_ws(ws_url(a, conversation_id)) as unknown_yet,
        ):
            assert (await next_frame(unknown_yet))["type"] == "error"
            assert (await on_b.post(f"{API}/new", json={"conversationId": conversation_id})).status_code == 201

            async with connect_ws(ws_url(a, conversation_id)) as ws:
                snapshot = await next_frame(ws)
                assert snapshot["type"] == "agent_conversation.snapshot"
                assert snapshot["conversation"]["messages"] == []

                latencies = []
                for round_number in range(10):
                    started = await on_b.post(
                        "/agent-tools",
                        json={"conversation_id": conversation_id, "prompt": f"task {round_number}"},
                        headers={"X-Webhook-Secret": WEBHOOK_SECRET},
                    )
                    assert started.status_code == 200 and started.json()["success"] is True, started.text
                    task_id = started.json()["taskId"]
                    pending = await next_frame(ws)
                    assert pending["reason"] == "tool_call", pending
                    assert pending["conversation"]["messages"][-1]["status"] == "pending"

                    sent = next(r for r in runner.received if r["id"] == task_id)
                    url, secret = split_secret(sent["callbackUrl"])
                    assert secret is not None and url.startswith(b.url)
                    posted = time.perf_counter()
                    answer = await on_b.post(
                        url.removeprefix(b.url),
                        json=callback_body("completion", task_id, sent["prompt"]),
                        headers={"X-Webhook-Secret": secret},
                    )
                    assert answer.status_code == 200, answer.text
                    update = await next_frame(ws)
                    latencies.append(time.perf_counter() - posted)
                    assert update["type"] == "agent_conversation.updated", update
                    assert update["reason"] == "tool_result"
                    result = update["conversation"]["messages"][-1]
                    assert result["taskId"] == task_id and result["status"] == "completed"
                    # The frame carries what GET answers on either instance.
                    assert update["conversation"] == (await on_a.get(f"{API}/{conversation_id}")).json()["conversation"]

                # A client message posted to B reaches A's socket too.
                message = {"role": "user", "content": "from b", "source": "text"}
                assert (await on_b.post(f"{API}/{conversation_id}/message", json=message)).status_code == 201
                update = await next_frame(ws)
                assert update["reason"] == "message" and update["conversation"]["messages"][-1]["content"] == "from b"

        latencies.sort()
        print(
            f"\ncallback on B -> frame on A: p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"max {latencies[-1] * 1000:.1f} ms over {len(latencies)}"
        )


async def test_drain_closes_websockets_with_1001(serve_procs: ServeProcesses, redis_server: RedisServer) -> None:
    a = serve_procs.new(REDIS_URL=redis_server.url)
    await a.start(path="/ready")
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=a.url, timeout=10) as http:
        assert (await http.post(f"{API}/new", json={"conversationId": "conv-drain"})).status_code == 201
    sockets = [await connect_ws(ws_url(a, "conv-drain")) for _ in range(3)]
    for ws in sockets:
        assert (await next_frame(ws))["type"] == "agent_conversation.snapshot"
    a.terminate()
    for ws in sockets:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT)
        assert closed.value.rcvd is not None, "the server closed without a close frame"
        assert closed.value.rcvd.code == 1001, closed.value.rcvd
    assert await a.wait_exit(15) == 0, a.output()


def silent_websocket(port: int, conversation_id: str) -> socket.socket:
    """A WebSocket handshake, then nothing: a peer that vanished without closing (never answers pings)."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {API}/ws?conversationId={conversation_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nX-Forwarded-User: test-user\r\n\r\n"
        ).encode()
    )
    sock.settimeout(10)
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


async def test_a_peer_that_stops_answering_pings_is_dropped(
    serve_procs: ServeProcesses, redis_server: RedisServer
) -> None:
    a = serve_procs.new(REDIS_URL=redis_server.url, WS_PING_INTERVAL_SECONDS="0.3", WS_PING_TIMEOUT_SECONDS="0.3")
    await a.start(path="/ready")
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=a.url, timeout=10) as http:
        assert (await http.post(f"{API}/new", json={"conversationId": "conv-silent"})).status_code == 201
    sock = await asyncio.to_thread(silent_websocket, a.port, "conv-silent")
    try:
        # A live client answers pings (the websockets library does) and stays.
        async with connect_ws(ws_url(a, "conv-silent")) as alive:
            await next_frame(alive)

            async def only_the_live_one() -> bool:
                return await metric(a, "elevenlabs_agent_websocket_subscribers") == 1

            await eventually(only_the_live_one, timeout=20)
            await asyncio.sleep(1.0)  # several ping intervals
            assert await metric(a, "elevenlabs_agent_websocket_subscribers") == 1
            await alive.send('{"type":"ping"}')
            assert await next_frame(alive) == {"type": "pong"}
    finally:
        sock.close()


async def test_one_instance_holds_1000_idle_sockets_with_bounded_memory(
    serve_procs: ServeProcesses, redis_server: RedisServer
) -> None:
    a = serve_procs.new(REDIS_URL=redis_server.url)
    await a.start(path="/ready")
    conversations = [f"conv-idle-{n}" for n in range(10)]
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=a.url, timeout=10) as http:
        for conversation_id in conversations:
            assert (await http.post(f"{API}/new", json={"conversationId": conversation_id})).status_code == 201
        # Warm-up: first-use allocations (imports, pools) are not per-socket costs.
        async with connect_ws(ws_url(a, conversations[0])) as ws:
            await next_frame(ws)
        await asyncio.sleep(0.5)
        before = rss_bytes(a.pid)

        sockets: list[Any] = []
        for start in range(0, IDLE_SOCKETS, 100):
            batch = await asyncio.gather(
                *(connect_ws(ws_url(a, conversations[n % 10])) for n in range(start, start + 100))
            )
            sockets.extend(batch)
        try:
            snapshots = await asyncio.gather(*(next_frame(ws) for ws in sockets))
            assert all(s["type"] == "agent_conversation.snapshot" for s in snapshots)
            assert await metric(a, "elevenlabs_agent_websocket_subscribers") == IDLE_SOCKETS
            await asyncio.sleep(0.5)
            after = rss_bytes(a.pid)
            per_socket = (after - before) / IDLE_SOCKETS
            print(
                f"\n{IDLE_SOCKETS} idle sockets: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
                f"{per_socket / 1024:.1f} KiB per socket"
            )
            # Bounded: about 33 KiB measured (no per-socket compressor, no Redis connection, one task); 64
            # KiB fails if something per-socket and large comes back (permessage-deflate alone adds 45).
            assert per_socket < 64 * 1024, per_socket

            # One change fans out to every socket of that conversation, once per instance read.
            message = {"role": "user", "content": "to everyone", "source": "text"}
            fanned = time.perf_counter()
            assert (await http.post(f"{API}/{conversations[3]}/message", json=message)).status_code == 201
            watchers = [ws for n, ws in enumerate(sockets) if n % 10 == 3]
            updates = await asyncio.gather(*(next_frame(ws) for ws in watchers))
            print(f"one update to {len(watchers)} sockets: {(time.perf_counter() - fanned) * 1000:.1f} ms")
            assert all(u["conversation"]["messages"][-1]["content"] == "to everyone" for u in updates)
            assert all(u["conversationId"] == conversations[3] for u in updates)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

        async def all_gone() -> bool:
            return await metric(a, "elevenlabs_agent_websocket_subscribers") == 0

        await eventually(all_gone, timeout=30)
