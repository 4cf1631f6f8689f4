"""Several instances (issue 5): two `serve` processes sharing one Redis, and behind a real load
balancer (haproxy from Debian, scripts/bootstrap installs it) a rolling restart under load.

Everything runs on loopback: the suite's redis-server, the instances as subprocesses
(tests/serve_proc.py), haproxy as a subprocess with a generated configuration that health-checks
GET /ready every 200 ms (fall 1, rise 1), the loopback cursor-runner and ElevenLabs in this test's
event loop. Loops are bounded in time and count; figures are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets

from elevenlabs_agent.redis.server import RedisServer, free_port
from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner, callback_body, split_secret
from elevenlabs_agent.sim.server import LocalServer
from elevenlabs_agent.sim.stack import as_env, neighbours
from tests.helpers import BROWSER_IDENTITY, tool_call
from tests.relay_browser import RelayBrowser
from tests.serve_proc import ServeProcess, ServeProcesses

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "multi-webhook-secret-0123456789"
RUNNER_SECRET = "multi-runner-secret-0123456789"
DRAIN_SECONDS = 1.0
SHUTDOWN_TIMEOUT_SECONDS = 5.0


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


SERVE_ENV = {
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "CURSOR_RUNNER_SECRET": RUNNER_SECRET,
    "LOG_LEVEL": "warning",
    "DRAIN_SECONDS": str(DRAIN_SECONDS),
    "SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT_SECONDS),
    "SSE_KEEPALIVE_SECONDS": "1",
}


async def start_all(*services: ServeProcess) -> None:
    await asyncio.gather(*(s.start(path="/ready") for s in services))


async def deliveries(client: httpx.AsyncClient, channel: str, outcome: str) -> float:
    text = (await client.get("/metrics")).text
    prefix = f'elevenlabs_agent_deliveries_total{{channel="{channel}",outcome="{outcome}"}} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix))


# --- two instances, one Redis ---------------------------------------------------------------------


async def test_callback_posted_to_the_other_instance_is_stored_and_delivered_and_seen_on_both(
    serve_procs: ServeProcesses, redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    """A task created through instance A; cursor-runner's callback reaches instance B (another node
    behind the same address): B stores it and pushes it to the session registered through A, and a
    browser whose SSE stream is open on A sees the result B produced."""
    runner = FakeCursorRunner(secret=RUNNER_SECRET, callback_kind="none")
    async with neighbours(runner=runner) as around:
        elevenlabs, el_server = around.elevenlabs, around.elevenlabs_server
        env = {"REDIS_URL": redis_server.url, **as_env(around.fields())}
        a, b = serve_procs.new(**env), serve_procs.new(**env)
        await start_all(a, b)

        voice = await websockets.connect(f"{el_server.ws_url}/v1/convai/conversation?agent_id=agent_multi")
        eleven_id = orjson.loads(await voice.recv())["conversation_initiation_metadata_event"]["conversation_id"]
        conversation_id = "conv-two-instances"
        async with (
            httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=a.url, timeout=10) as on_a,
            httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=b.url, timeout=10) as on_b,
        ):
            created = await on_a.post("/agent-conversations/api/new", json={"conversationId": conversation_id})
            assert created.status_code == 201, created.text
            registered = await on_a.post(
                f"/agent-conversations/api/{conversation_id}/session",
                json={
                    "sessionUrl": f"{el_server.ws_url}/v1/convai/conversation?agent_id=agent_multi",
                    "pushUrl": f"{el_server.ws_url}/push/{eleven_id}",
                    "metadata": {"agentId": "agent_multi", "elevenConversationId": eleven_id},
                },
            )
            assert registered.status_code == 200, registered.text
            # The browser's relay stream on A (not acknowledging: the push channel confirms).
            browser = RelayBrowser(a.url, conversation_id, acknowledge=False, max_seconds=30).start()
            try:
                await browser.connected()
                started = await tool_call(on_a, eleven_id, "rename the module", secret=WEBHOOK_SECRET)
                assert started.status_code == 200 and started.json()["success"] is True, started.text
                task_id = started.json()["taskId"]
                sent = next(r for r in runner.received if r["id"] == task_id)
                url, secret = split_secret(sent["callbackUrl"])
                assert secret and url.startswith(a.url), url
                pushed_before = (
                    await deliveries(on_a, "websocket", "delivered"),
                    await deliveries(on_b, "websocket", "delivered"),
                )

                headers = {"X-Webhook-Secret": secret, "X-Cursor-Runner-Secret": secret}
                body = callback_body("completion", task_id, sent["prompt"])
                answer = await on_b.post(url.removeprefix(a.url), json=body, headers=headers)
                assert answer.status_code == 200 and answer.json()["status"] == "completed", answer.text

                updates = await elevenlabs.wait_update(eleven_id, 1, timeout=10)
                missing = await browser.wait_for({task_id}, timeout=10, acked=False)
                assert not missing, "the SSE stream on A never saw the result B stored"

                async def confirmed() -> bool:
                    return await redis.hget(f"cursor_task:{task_id}", "delivery") == "delivered"

                async with asyncio.timeout(5):
                    while not await confirmed():
                        await asyncio.sleep(0.02)
                pushed_after = (
                    await deliveries(on_a, "websocket", "delivered"),
                    await deliveries(on_b, "websocket", "delivered"),
                )
                # cursor-runner never retries, but a duplicate to A changes nothing and pushes nothing.
                duplicate = await on_a.post(url.removeprefix(a.url), json=body, headers=headers)
                assert duplicate.status_code == 200 and duplicate.json().get("duplicate") is True, duplicate.text
                # A later result through A (the barrier) arrives, and nothing for the duplicate before it.
                later = await tool_call(on_a, eleven_id, "the barrier", secret=WEBHOOK_SECRET)
                later_id = later.json()["taskId"]
                later_sent = next(r for r in runner.received if r["id"] == later_id)
                later_url, later_secret = split_secret(later_sent["callbackUrl"])
                answer = await on_a.post(
                    later_url.removeprefix(a.url),
                    json=callback_body("completion", later_id, later_sent["prompt"]),
                    headers={"X-Webhook-Secret": later_secret or "", "X-Cursor-Runner-Secret": later_secret or ""},
                )
                assert answer.status_code == 200, answer.text
                async with asyncio.timeout(10):
                    while later_id not in [
                        u["context_id"] for u in elevenlabs.conversations[eleven_id].contextual_updates
                    ]:
                        await asyncio.sleep(0.02)
            finally:
                await browser.stop()

        task = await redis.hgetall(f"cursor_task:{task_id}")
        message_field = await redis.hget(f"elevenlabs:conversation:{conversation_id}", f"task:{task_id}")
        message = orjson.loads(await redis.hget(f"elevenlabs:conversation:{conversation_id}", message_field))
        counts = Counter(u["context_id"] for u in elevenlabs.conversations[eleven_id].contextual_updates)
        pushed_by = {
            name: after - before for name, after, before in zip("AB", pushed_after, pushed_before, strict=True)
        }
        print(
            f"\ntask created on A, callback on B: pushes by instance {pushed_by}; "
            f"SSE on A received {dict(browser.received)}; pushes per context_id {dict(counts)}"
        )
        assert task["status"] == "completed" and task.get("recordedAt") and task["deliveredVia"] == "websocket", task
        assert message["status"] == "completed" and message["role"] == "tool", message
        assert [u["context_id"] for u in updates] == [task_id]
        assert pushed_by == {"A": 0, "B": 1}, pushed_by
        assert counts == Counter({task_id: 1, later_id: 1}), counts
        assert browser.received[task_id] >= 1
        await voice.close()
        for service in (a, b):
            service.terminate()
        assert [await s.wait_exit(DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 5) for s in (a, b)] == [0, 0]


# --- behind haproxy: rolling restart under load -------------------------------------------------------


class HAProxy:
    """haproxy in the foreground (-db) in front of `servers` (name -> port), health-checking GET /ready
    every 200 ms (fall 1, rise 1), with a CSV stats page to see what it thinks of each server."""

    def __init__(self, tmp: Path, servers: dict[str, int]) -> None:
        binary = haproxy_binary()
        assert binary is not None
        self.binary = binary
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "haproxy.cfg"
        self.log = tmp / "haproxy.log"
        lines = [
            "global",
            "    maxconn 2000",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    timeout http-keep-alive 30s",  # longer than the clients keep idle connections
            "    retries 2",
            "    option redispatch",
            "frontend agents",
            f"    bind 127.0.0.1:{self.port}",
            "    default_backend instances",
            "backend instances",
            "    balance roundrobin",
            "    option httpchk GET /ready",
            "    http-check expect status 200",
            "    default-server inter 200ms fastinter 200ms downinter 200ms fall 1 rise 1",
            *(f"    server {name} 127.0.0.1:{port} check" for name, port in servers.items()),
            "listen stats",
            f"    bind 127.0.0.1:{self.stats_port}",
            "    stats enable",
            "    stats uri /stats",
            "",
        ]
        self.config.write_text("\n".join(lines))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        checked = subprocess.run(
            [self.binary, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=10
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    async def states(self) -> dict[str, str]:
        """What haproxy thinks of each backend server: "UP", "DOWN", "UP 1/2", "no check", ..."""
        async with httpx.AsyncClient(timeout=2) as client:
            text = (await client.get(f"http://127.0.0.1:{self.stats_port}/stats;csv")).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "instances" and r["svname"] != "BACKEND"}

    async def wait_state(self, server: str, state: str, timeout: float = 10.0) -> float:
        began = time.monotonic()
        last: dict[str, str] = {}
        while time.monotonic() - began < timeout:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                last = await self.states()
                if last.get(server) == state:
                    return time.monotonic() - began
            await asyncio.sleep(0.05)
        raise AssertionError(f"haproxy did not see {server} {state} within {timeout} s: {last}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Load:
    sent: int = 0
    started: list[tuple[str, str]] = field(default_factory=list)  # (conversation, task id)
    failures: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # when each request was sent


async def load_loop(load: Load, url: str, conversation_id: str, stop: asyncio.Event, deadline: float) -> None:
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=url, timeout=10) as client:
        for n in range(100_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            load.sent += 1
            load.times.append(time.monotonic())
            try:
                response = await tool_call(client, conversation_id, f"task {n}", secret=WEBHOOK_SECRET)
            except httpx.HTTPError as exc:
                load.failures.append(f"{exc!r}")
                continue
            body: dict[str, Any] = {}
            with contextlib.suppress(ValueError):
                body = response.json()
            if response.status_code == 200 and body.get("success") is True:
                load.started.append((conversation_id, body["taskId"]))
            else:
                load.failures.append(f"HTTP {response.status_code} {response.text[:200]}")
            await asyncio.sleep(0.03)


@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed (scripts/bootstrap installs it)")
async def test_rolling_restart_behind_haproxy_under_load_fails_no_request_and_loses_no_callback(
    tmp_path: Path, serve_procs: ServeProcesses, redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    conversations = 4
    hard_deadline = time.monotonic() + 75
    runner = FakeCursorRunner(secret=RUNNER_SECRET, callback_kind="completion", callback_delay=0.2)
    ports = {"a": free_port(), "b": free_port()}
    lb = HAProxy(tmp_path, ports)
    browsers: list[RelayBrowser] = []
    try:
        async with LocalServer(runner.app()) as runner_server:
            # Both instances hand out callback URLs on the load balancer's address.
            env = {
                "REDIS_URL": redis_server.url,
                "CURSOR_RUNNER_URL": runner_server.url,
                "ELEVENLABS_AGENT_URL": lb.url,
            }
            instances = {name: serve_procs.new(port=port, **env) for name, port in ports.items()}
            await start_all(*instances.values())
            lb.start()
            for name in instances:
                await lb.wait_state(name, "UP")

            conversation_ids = [f"conv-rolling-{i}" for i in range(conversations)]
            async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=lb.url, timeout=10) as client:
                for conversation_id in conversation_ids:
                    created = await client.post(
                        "/agent-conversations/api/new", json={"conversationId": conversation_id}
                    )
                    assert created.status_code == 201, created.text
            browsers = [RelayBrowser(lb.url, c, max_seconds=70).start() for c in conversation_ids]
            for browser in browsers:
                await browser.connected()

            load, stop = Load(), asyncio.Event()
            workers = [asyncio.create_task(load_loop(load, lb.url, c, stop, hard_deadline)) for c in conversation_ids]
            async with asyncio.timeout(15):
                while sum(1 for s, _ in runner.callbacks if s == 200) < 10 or not all(b.received for b in browsers):
                    await asyncio.sleep(0.05)
            assert not load.failures, load.failures[:5]

            rolling_began = time.monotonic()
            steps: dict[str, dict[str, float]] = {}
            for name, old in list(instances.items()):
                began = time.monotonic()
                old.terminate()
                out = await lb.wait_state(name, "DOWN", timeout=DRAIN_SECONDS + 2)
                code = await old.wait_exit(DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 5)
                assert code == 0, f"{name} exited with {code}:\n{old.output()[-3000:]}"
                exited = time.monotonic() - began
                new = serve_procs.new(port=old.port, **env)
                await new.start(path="/ready")
                ready = time.monotonic() - began
                await lb.wait_state(name, "UP")
                instances[name] = new
                steps[name] = {
                    "out of haproxy (s)": round(out, 2),
                    "exited (s)": round(exited, 2),
                    "ready again (s)": round(ready, 2),
                    "back in haproxy (s)": round(time.monotonic() - began, 2),
                }
            rolling_ended = time.monotonic()
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), 15)

            async with asyncio.timeout(15):
                while len(runner.callbacks) < len(runner.received):
                    await asyncio.sleep(0.05)
            acknowledged = [a["requestId"] for s, a in runner.callbacks if s == 200]
            failed_callbacks = [(s, a) for s, a in runner.callbacks if s != 200]
            conversation_of = dict((t, c) for c, t in load.started)
            async with redis.pipeline(transaction=False) as pipe:
                for task_id in acknowledged:
                    pipe.hget(f"cursor_task:{task_id}", "status")
                    pipe.hget(f"cursor_task:{task_id}", "recordedAt")
                stored_fields = await pipe.execute()
            stored = [
                t
                for t, status, recorded in zip(acknowledged, stored_fields[::2], stored_fields[1::2], strict=True)
                if status == "completed" and recorded
            ]
            by_conversation: dict[str, set[str]] = {c: set() for c in conversation_ids}
            for task_id in acknowledged:
                by_conversation[conversation_of[task_id]].add(task_id)
            undelivered: set[str] = set()
            for browser in browsers:
                undelivered |= await browser.wait_for(by_conversation[browser.conversation_id], timeout=15)
            async with redis.pipeline(transaction=False) as pipe:
                for task_id in acknowledged:
                    pipe.hget(f"cursor_task:{task_id}", "delivery")
                confirmed = [t for t, d in zip(acknowledged, await pipe.execute(), strict=True) if d == "delivered"]
    finally:
        for browser in browsers:
            await browser.stop()
        lb.stop()

    during = sum(1 for t in load.times if rolling_began <= t <= rolling_ended)
    received = Counter[str]()
    for browser in browsers:
        received.update(browser.received)
    refusals = [r for b in browsers for r in b.refusals]
    figures = {
        "rolling restart (s)": round(rolling_ended - rolling_began, 2),
        "steps": steps,
        "requests sent": load.sent,
        "requests during the rolling restart": during,
        "failed requests": len(load.failures),
        "callbacks sent": len(runner.callbacks),
        "callbacks 200": len(acknowledged),
        "callbacks failed": len(failed_callbacks),
        "results stored": len(stored),
        "results delivered to the browser": len(acknowledged) - len(undelivered),
        "results confirmed (acknowledged by the browser)": len(confirmed),
        "received more than once (context ids)": sum(1 for n in received.values() if n > 1),
        "SSE reconnects": sum(b.connects for b in browsers) - len(browsers),
        "SSE/ack refusals": len(refusals),
    }
    print(f"\nrolling restart behind haproxy (DRAIN_SECONDS={DRAIN_SECONDS}, checks every 200 ms): {figures}")
    assert not load.failures, f"{len(load.failures)} failed requests: {load.failures[:10]}"
    assert during > 0, "no request was sent during the rolling restart"
    assert not failed_callbacks, failed_callbacks[:10]
    assert len(acknowledged) == len(runner.received) == len(load.started)
    assert len(stored) == len(acknowledged), set(acknowledged) - set(stored)
    assert not undelivered, f"{len(undelivered)} results never reached the browser"
    assert len(confirmed) == len(acknowledged), set(acknowledged) - set(confirmed)
    assert not refusals, refusals[:5]
    assert sum(b.connects for b in browsers) > len(browsers), "no SSE stream was moved by the restart"
