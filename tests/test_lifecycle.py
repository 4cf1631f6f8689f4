"""Process lifecycle (SPEC §2, §3, §7 `serve`): graceful drain under load, signals, Redis outages and
housekeeping that finishes interrupted work.

`elevenlabs-agent serve` runs as a real subprocess on a loopback port; its cursor-runner is a
FakeCursorRunner served by LocalServer in the test's own event loop, so every wait here is async
(a blocking call would stall the fake while the service is calling it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from elevenlabs_agent import events, housekeeping, serve
from elevenlabs_agent import logging as agent_logging
from elevenlabs_agent.redis.server import RedisServer
from elevenlabs_agent.settings import Settings
from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner
from elevenlabs_agent.sim.server import LocalServer
from elevenlabs_agent.stores.tasks import TaskStore
from tests.conftest import StackFactory, eventually
from tests.helpers import BROWSER_IDENTITY, tool_call
from tests.serve_proc import ServeProcess, ServeProcesses, wait_status

WEBHOOK_SECRET = "lifecycle-webhook-secret-0123456789"
RUNNER_SECRET = "lifecycle-runner-secret-0123456789"


# --- helpers --------------------------------------------------------------------------------------


def assert_speakable(body: dict[str, Any]) -> str:
    message = body.get("message")
    assert isinstance(message, str) and len(message.strip()) > 10, body
    assert "{" not in message and "Traceback" not in message, message
    return message


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Any]:
    """`factory(redis_url, runner_url, piped=False, **env)`: a `serve` process (not started yet)."""
    processes = ServeProcesses(
        tmp_path, WEBHOOK_SECRET=WEBHOOK_SECRET, CURSOR_RUNNER_SECRET=RUNNER_SECRET, LOG_LEVEL="warning"
    )

    def factory(redis_url: str, runner_url: str, *, piped: bool = False, **env: str) -> ServeProcess:
        return processes.new(piped=piped, REDIS_URL=redis_url, CURSOR_RUNNER_URL=runner_url, **env)

    yield factory
    processes.kill_all()


@pytest.fixture
async def runner() -> AsyncIterator[tuple[FakeCursorRunner, LocalServer]]:
    """A loopback cursor-runner in this test's loop (no callbacks unless a test asks for them)."""
    fake = FakeCursorRunner(secret=RUNNER_SECRET, callback_kind="none")
    async with LocalServer(fake.app()) as server:
        yield fake, server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server this test owns (AOF on, data in tmp_path), not started yet."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    yield server
    server.stop()


async def tool_message(redis: aioredis.Redis, conversation_id: str, task_id: str) -> dict[str, Any]:
    key = f"elevenlabs:conversation:{conversation_id}"
    field_name = await redis.hget(key, f"task:{task_id}")
    assert field_name, f"no tool message for task {task_id} in {key}"
    raw = await redis.hget(key, field_name)
    assert raw
    message: dict[str, Any] = orjson.loads(raw)
    return message


# --- SIGTERM under concurrent load ----------------------------------------------------------------


@dataclass
class Load:
    sent: int = 0
    ok: int = 0
    refused: int = 0
    sent_after_signal: int = 0
    ok_after_signal: int = 0
    failures: list[str] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)
    signalled_at: float | None = None
    first_ready_503: float | None = None  # when the load balancer's probe first saw 503
    health_during_drain: list[int] = field(default_factory=list)
    ready_statuses_after_signal: list[int] = field(default_factory=list)
    lb_out: float | None = None
    served_after_drain: int = 0

    def record(self, what: str, started: float, outcome: str | None) -> None:
        """outcome None = success; 'refused' = connection refused; anything else = a failure."""
        after = self.signalled_at is not None and started >= self.signalled_at
        if outcome == "refused":
            self.refused += 1
            return
        self.sent += 1
        self.sent_after_signal += after
        if outcome is None:
            self.ok += 1
            self.ok_after_signal += after
        else:
            when = "before SIGTERM"
            if self.signalled_at is not None:
                sent, failed = started - self.signalled_at, time.monotonic() - self.signalled_at
                when = f"sent at {sent:+.3f} s, failed at {failed:+.3f} s from SIGTERM"
            self.failures.append(f"{what}: {outcome} ({when})")


READY_PROBE = """
import http.client, sys, time
port, until = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
for _ in range(100_000):
    if time.monotonic() > until:
        break
    sent = time.monotonic()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/ready")
        status = connection.getresponse().status
        connection.close()
    except OSError:
        status = 0
    print(f"{sent:.6f} {status}", flush=True)
    if status == 0:
        break
    time.sleep(0.02)
"""


class ReadyProber:
    """Polls /ready from a separate process, so the timing does not depend on how busy this process
    is (CLOCK_MONOTONIC is shared between processes). Stops at the first refused connection."""

    def __init__(self, service: ServeProcess, tmp: Path, seconds: float) -> None:
        self.path = tmp / "ready-probe.txt"
        with self.path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", READY_PROBE, str(service.port), str(seconds)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def results(self, origin: float) -> list[tuple[float, int]]:
        """(seconds since `origin` the probe was sent, status; 0 = no answer), in order."""
        for _ in range(500):
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.02)
        else:
            self.process.kill()
            self.process.wait(5)
        results = []
        for line in self.path.read_text().splitlines():
            sent, status = line.split()
            results.append((round(float(sent) - origin, 3), int(status)))
        return results


async def attempt(load: Load, what: str, send: Coroutine[Any, Any, httpx.Response]) -> httpx.Response | None:
    """Send one request; classify the outcome. Returns the response, or None if there was none."""
    started = time.monotonic()
    try:
        response = await send
    except httpx.ConnectError as exc:
        if load.signalled_at is None:
            load.record(what, started, f"connect error before shutdown: {exc!r}")
        else:
            load.record(what, started, "refused")  # the port closed: a load balancer routes away
        return None
    except httpx.HTTPError as exc:  # reset or protocol error mid-request, timeout
        load.record(what, started, f"{type(exc).__name__}: {exc!r}")
        return None
    if response.status_code >= 500:
        load.record(what, started, f"HTTP {response.status_code} {response.text[:200]}")
    elif response.status_code != 200:
        load.record(what, started, f"unexpected HTTP {response.status_code} {response.text[:200]}")
    else:
        load.record(what, started, None)
    return response


@pytest.mark.slow
async def test_sigterm_under_concurrent_load_drains_without_failed_requests(
    tmp_path: Path,
    serve_factory: Any,
    runner: tuple[FakeCursorRunner, LocalServer],
    redis: aioredis.Redis,
    redis_server: RedisServer,
) -> None:
    drain, shutdown_timeout, clients, lb_reaction = 2.0, 5.0, 20, 1.0
    fake, runner_server = runner
    service = serve_factory(
        redis_server.url, runner_server.url, DRAIN_SECONDS=str(drain), SHUTDOWN_TIMEOUT_SECONDS=str(shutdown_timeout)
    )
    health = await service.start()
    assert health["redis"] == "connected", health
    load = Load()
    stop_sending = asyncio.Event()  # the load balancer took the instance out
    port_closed = asyncio.Event()
    hard_deadline = time.monotonic() + 60

    async def client_loop(index: int) -> None:
        async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=10) as client:
            for n in range(100_000):
                if stop_sending.is_set() or port_closed.is_set() or time.monotonic() > hard_deadline:
                    return
                response = await attempt(
                    load, "POST /agent-tools", tool_call(client, f"conv-load-{index}-{n}", secret=WEBHOOK_SECRET)
                )
                if response is None and load.signalled_at is not None:
                    return
                if response is not None and response.status_code == 200:
                    body = response.json()
                    if body.get("success") is True:
                        load.task_ids.append(body["requestId"])
                    else:
                        load.failures.append(f"tool call answered success:false: {body}")
                response = await attempt(load, "GET /health", client.get("/health"))
                if response is None and load.signalled_at is not None:
                    return

    def take_out() -> None:
        load.lb_out = time.monotonic()
        stop_sending.set()

    async def ready_probe() -> None:
        """Polls /ready like a load balancer's health check; takes the instance out after a 503."""
        async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=5) as client:
            for _ in range(10_000):
                if port_closed.is_set() or time.monotonic() > hard_deadline:
                    return
                started = time.monotonic()
                try:
                    response = await client.get("/ready")
                except httpx.HTTPError:
                    if load.signalled_at is not None:
                        return
                    raise
                if load.signalled_at is not None and started >= load.signalled_at:
                    load.ready_statuses_after_signal.append(response.status_code)
                    if response.status_code == 503 and load.first_ready_503 is None:
                        load.first_ready_503 = time.monotonic()
                        asyncio.get_running_loop().call_later(lb_reaction, take_out)
                await asyncio.sleep(0.02)

    async def health_monitor() -> None:
        """Liveness: /health answers 200 on fresh connections all through the drain; once the drain
        period is over the port closes (connections refused or dropped unanswered), never a 5xx."""
        assert load.signalled_at is not None
        drain_end = load.signalled_at + drain
        for _ in range(1_000):
            if time.monotonic() >= drain_end - 0.15:  # keep out of the race with the moment shutdown begins
                break
            async with httpx.AsyncClient(
                headers=BROWSER_IDENTITY, base_url=service.url, timeout=5
            ) as client:  # a fresh connection
                response = await attempt(load, "GET /health (monitor)", client.get("/health"))
            if response is not None:
                load.health_during_drain.append(response.status_code)
            await asyncio.sleep(0.1)
        await asyncio.sleep(max(0.0, drain_end + 0.05 - time.monotonic()))
        for _ in range(1_000):
            if time.monotonic() > hard_deadline:
                return
            try:
                async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=5) as client:
                    response = await client.get("/health")
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                load.refused += 1  # after the drain: what a load balancer has long routed away
                port_closed.set()
                return
            load.served_after_drain += 1
            if response.status_code >= 500:
                load.failures.append(f"GET /health after the drain: HTTP {response.status_code} {response.text[:200]}")
            await asyncio.sleep(0.05)

    workers = [asyncio.create_task(client_loop(i)) for i in range(clients)]
    probe = asyncio.create_task(ready_probe())
    warm_up = time.monotonic() + 15
    while load.ok < 4 * clients and time.monotonic() < warm_up and not load.failures:  # warm up under load
        await asyncio.sleep(0.05)
    assert load.ok >= 4 * clients and not load.failures, (load.ok, load.failures[:5])
    sent_before = load.sent

    prober = ReadyProber(service, tmp_path, seconds=drain + shutdown_timeout + 5)
    await asyncio.sleep(0.3)
    load.signalled_at = time.monotonic()
    service.signal(signal.SIGTERM)
    monitor = asyncio.create_task(health_monitor())  # a liveness probe, not routed by the load balancer
    code = await service.wait_exit(drain + shutdown_timeout + 10)
    time_to_exit = time.monotonic() - load.signalled_at
    port_closed.set()
    stop_sending.set()
    await asyncio.wait_for(asyncio.gather(*workers, probe, monitor), 20)
    external = await prober.results(load.signalled_at)

    ready_after = (load.first_ready_503 - load.signalled_at) if load.first_ready_503 else None
    lb_out_after = (load.lb_out - load.signalled_at) if load.lb_out else None
    figures = {
        "clients": clients,
        "requests sent": load.sent,
        "sent before SIGTERM": sent_before,
        "sent after SIGTERM": load.sent_after_signal,
        "ok after SIGTERM": load.ok_after_signal,
        "ok": load.ok,
        "failed": len(load.failures),
        "refused/dropped after the drain": load.refused,
        "answered after the drain": load.served_after_drain,
        "tasks started": len(load.task_ids),
        "load balancer saw /ready 503 at (s)": ready_after and round(ready_after, 3),
        "external /ready probes after SIGTERM (sent at, status)": [p for p in external if p[0] >= 0][:3],
        "load balancer out after (s)": lb_out_after and round(lb_out_after, 3),
        "/health during the drain": len(load.health_during_drain),
        "time to exit (s)": round(time_to_exit, 2),
        "exit code": code,
    }
    print(f"\nSIGTERM under load (DRAIN_SECONDS={drain}, SHUTDOWN_TIMEOUT_SECONDS={shutdown_timeout}): {figures}")
    assert code == 0, f"exit code {code}:\n{service.output()[-3000:]}"
    assert time_to_exit <= drain + shutdown_timeout, time_to_exit
    assert time_to_exit >= drain - 0.1, f"exited after {time_to_exit:.2f} s, before the drain period ended"
    assert not load.failures, f"{len(load.failures)} failed requests: {load.failures[:10]}"
    statuses_after = load.ready_statuses_after_signal
    assert 503 in statuses_after, statuses_after
    assert 200 not in statuses_after[statuses_after.index(503) :], statuses_after  # stays 503 once draining
    # Measured from outside this (busy) process: every probe sent once the signal had a moment to land
    # answered 503 through the drain, and one within 0.5 s did; near and after its end, 503 or no answer.
    during = [(at, status) for at, status in external if 0.05 <= at < drain - 0.1]
    assert during and all(status == 503 for _, status in during), during[:20]
    assert any(status == 503 and at <= 0.5 for at, status in during), during[:5]
    assert all(status in (503, 0) for at, status in external if at >= drain - 0.1), external[-10:]
    assert load.sent_after_signal > clients and load.ok_after_signal == load.sent_after_signal
    assert load.health_during_drain and set(load.health_during_drain) == {200}, load.health_during_drain
    assert "Traceback" not in service.output(), service.output()[-3000:]

    # Every task the webhook reported as started exists in Redis (it is recorded before dispatch).
    assert len(load.task_ids) > clients
    async with redis.pipeline(transaction=False) as pipe:
        for task_id in load.task_ids:
            pipe.hget(f"cursor_task:{task_id}", "status")
        statuses = await pipe.execute()
    missing = [t for t, s in zip(load.task_ids, statuses, strict=True) if s is None]
    assert not missing, f"{len(missing)} started tasks missing from Redis: {missing[:5]}"
    assert set(statuses) == {"pending"}, set(statuses)
    assert len(fake.received) >= len(load.task_ids)


# --- open SSE streams and second signals ------------------------------------------------------------


@pytest.mark.slow
async def test_open_event_stream_does_not_hold_shutdown(
    serve_factory: Any, runner: tuple[FakeCursorRunner, LocalServer], redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    _, runner_server = runner
    service = serve_factory(
        redis_server.url,
        runner_server.url,
        DRAIN_SECONDS="1",
        SHUTDOWN_TIMEOUT_SECONDS="30",
        SSE_KEEPALIVE_SECONDS="60",
    )
    await service.start()
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=10) as client:
        created = await client.post("/agent-conversations/api/new", json={})
        assert created.status_code == 201, created.text
        conversation_id = created.json()["conversationId"]

    received: list[bytes] = []
    first_chunk = asyncio.Event()
    stream_ended: list[str] = []

    async def read_stream() -> None:
        timeout = httpx.Timeout(5, read=60)
        async with (
            httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=timeout) as client,
            client.stream("GET", f"/agent-conversations/api/{conversation_id}/events") as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            try:
                async for chunk in stream.aiter_raw():
                    received.append(chunk)
                    first_chunk.set()
                stream_ended.append("closed by the server")
            except httpx.HTTPError as exc:
                stream_ended.append(type(exc).__name__)

    reader = asyncio.create_task(read_stream())
    await asyncio.wait_for(first_chunk.wait(), 10)

    service.signal(signal.SIGTERM)
    began = time.monotonic()
    code = await service.wait_exit(15)
    elapsed = time.monotonic() - began
    print(f"\nSSE open: exit code {code} after {elapsed:.2f} s (DRAIN_SECONDS=1, SHUTDOWN_TIMEOUT_SECONDS=30)")
    assert code == 0, f"exit code {code}:\n{service.output()[-3000:]}"
    assert elapsed < 5, f"an open SSE stream held shutdown for {elapsed:.2f} s"
    assert elapsed >= 0.9, "exited before the drain period ended"
    await asyncio.wait_for(reader, 5)
    assert stream_ended, "the event stream was not closed"


@pytest.mark.slow
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_second_signal_during_drain_exits_at_once(
    serve_factory: Any,
    runner: tuple[FakeCursorRunner, LocalServer],
    redis: aioredis.Redis,
    redis_server: RedisServer,
    second: signal.Signals,
) -> None:
    _, runner_server = runner
    service = serve_factory(redis_server.url, runner_server.url, DRAIN_SECONDS="20", SHUTDOWN_TIMEOUT_SECONDS="30")
    await service.start()
    service.signal(signal.SIGTERM)
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=5) as client:
        await wait_status(client, "/ready", 503, 5)  # the first signal was taken: draining
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["draining"] is True
    assert service.proc.poll() is None

    service.signal(second)
    began = time.monotonic()
    code = await service.wait_exit(15)
    elapsed = time.monotonic() - began
    print(f"\nsecond signal {second.name}: exit code {code} after {elapsed:.2f} s (DRAIN_SECONDS=20)")
    assert code == 0, f"exit code {code}:\n{service.output()[-3000:]}"
    assert elapsed < 3, f"the second signal took {elapsed:.2f} s to stop the process"


@pytest.mark.slow
async def test_sigterm_while_a_log_write_is_blocked_still_drains_and_exits(
    serve_factory: Any, runner: tuple[FakeCursorRunner, LocalServer], redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    """At LOG_LEVEL=info every request writes a log line to stdout. When the log consumer stalls (a full
    pipe: a slow log shipper) that write blocks; a SIGTERM arriving then must still lead to the drain
    and exit 0 as soon as the consumer catches up."""
    _, runner_server = runner
    timing = {"DRAIN_SECONDS": "0.5", "SHUTDOWN_TIMEOUT_SECONDS": "5"}
    service = serve_factory(redis_server.url, runner_server.url, piped=True, LOG_LEVEL="info", **timing)
    await service.start()
    service.reading = False
    requests, stalled = 0, False
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=1) as client:
        for requests in range(1, 20_001):  # noqa: B007 - the count is reported
            try:
                await client.get("/health")
            except httpx.TimeoutException:
                stalled = True
                break
    assert stalled, "the service never blocked on its log pipe"

    service.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    service.reading = True  # the log consumer catches up
    began = time.monotonic()
    code = await service.wait_exit(0.5 + 5 + 5)
    elapsed = time.monotonic() - began
    print(f"\nSIGTERM during a blocked log write (after {requests} requests): exit code {code} after {elapsed:.2f} s")
    assert code == 0, (
        f"serve did not exit (code {code}) {elapsed:.1f} s after SIGTERM once its log pipe was read again; "
        f"output tail:\n{service.output()[-1500:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("shutdown_timeout", [0.9, 2.5])
async def test_request_in_flight_when_shutdown_begins_is_answered_within_the_shutdown_timeout(
    serve_factory: Any,
    runner: tuple[FakeCursorRunner, LocalServer],
    redis: aioredis.Redis,
    redis_server: RedisServer,
    shutdown_timeout: float,
) -> None:
    """A webhook that arrives during the drain and is still being answered when uvicorn's graceful
    shutdown begins gets its answer, as long as that takes less than SHUTDOWN_TIMEOUT_SECONDS."""
    fake, runner_server = runner
    fake.answer_delay = 0.6  # cursor-runner takes 0.6 s to accept the task
    drain = 0.3
    timing = {"DRAIN_SECONDS": str(drain), "SHUTDOWN_TIMEOUT_SECONDS": str(shutdown_timeout)}
    service = serve_factory(redis_server.url, runner_server.url, DISPATCH_TIMEOUT_SECONDS="5", **timing)
    await service.start()
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=10) as client:
        service.signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            response = await tool_call(client, "conv-inflight", "slow to dispatch", secret=WEBHOOK_SECRET)
        except httpx.HTTPError as exc:
            response = None
            error = repr(exc)
        answered = time.monotonic() - signalled
    code = await service.wait_exit(drain + shutdown_timeout + 5)
    print(
        f"\nin flight at shutdown (SHUTDOWN_TIMEOUT_SECONDS={shutdown_timeout}): "
        f"{response.status_code if response is not None else error} after {answered:.2f} s; exit code {code}"
    )
    assert response is not None, f"the request in flight was dropped at shutdown ({answered:.2f} s): {error}"
    assert response.status_code == 200 and response.json()["success"] is True, response.text
    assert answered > drain, "the request was not in flight when shutdown began"
    assert code == 0, service.output()[-3000:]


# --- a callback that arrives during the drain --------------------------------------------------------


@pytest.mark.slow
async def test_callback_during_drain_is_stored_and_acknowledged(
    serve_factory: Any, runner: tuple[FakeCursorRunner, LocalServer], redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    fake, runner_server = runner
    fake.callback_kind = "completion"
    fake.callback_delay = 0.5
    drain = 2.0
    service = serve_factory(
        redis_server.url, runner_server.url, DRAIN_SECONDS=str(drain), SHUTDOWN_TIMEOUT_SECONDS="10"
    )
    await service.start()
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=10) as client:
        response = await tool_call(client, "conv-drain-callback", "fix the flaky test", secret=WEBHOOK_SECRET)
        signalled = time.monotonic()
        service.signal(signal.SIGTERM)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True, body
        task_id = body["requestId"]
        await wait_status(client, "/ready", 503, 2)

    await fake.wait_callbacks(1, timeout=drain + 5)
    callback_at = time.monotonic() - signalled
    status, answer = fake.callbacks[0]
    print(f"\ncallback during drain: answered {status} {answer} {callback_at:.2f} s after SIGTERM")
    assert callback_at < drain, "the callback did not arrive during the drain"
    assert status == 200, answer
    assert answer["success"] is True and answer["requestId"] == task_id and answer["status"] == "completed", answer

    code = await service.wait_exit(drain + 10 + 5)
    assert code == 0, f"exit code {code}:\n{service.output()[-3000:]}"

    task = await redis.hgetall(f"cursor_task:{task_id}")
    assert task["status"] == "completed", task
    assert task.get("callbackAt") and task.get("recordedAt"), task
    assert "All tests pass." in orjson.loads(task["result"])["output"]
    message = await tool_message(redis, "conv-drain-callback", task_id)
    assert message["status"] == "completed" and message["role"] == "tool", message
    # Published for delivery (no live session: it waits for the next one).
    assert await redis.hexists("elevenlabs:pending:{conv-drain-callback}", task_id)


# --- Redis outages ------------------------------------------------------------------------------------


async def assert_redis_down_answers(client: httpx.AsyncClient, conversation_id: str, how: str = "down") -> None:
    began = time.monotonic()
    response = await tool_call(client, conversation_id, "while redis is down", secret=WEBHOOK_SECRET)
    elapsed = time.monotonic() - began
    print(f"\nwebhook with Redis {how}: HTTP {response.status_code} in {elapsed:.2f} s")
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is False and isinstance(body.get("error"), str) and body["error"], body
    assert_speakable(body)
    assert elapsed < 5, f"the webhook took {elapsed:.2f} s to answer with Redis down"

    began = time.monotonic()
    ready = await client.get("/ready")
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["redis:ping"][0]["status"] == "fail"
    health = await client.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok" and health.json()["redis"] == "disconnected", health.json()
    assert time.monotonic() - began < 3, "the probes took too long with Redis down"


@pytest.mark.slow
async def test_service_recovers_from_a_redis_restart_without_restarting(
    serve_factory: Any, runner: tuple[FakeCursorRunner, LocalServer], own_redis: RedisServer
) -> None:
    _, runner_server = runner
    own_redis.start()
    service = serve_factory(own_redis.url, runner_server.url, DRAIN_SECONDS="0.2", SHUTDOWN_TIMEOUT_SECONDS="5")
    await service.start()
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=15) as client:
        await wait_status(client, "/ready", 200, 5)
        before = await tool_call(client, "conv-outage", "before the outage", secret=WEBHOOK_SECRET)
        assert before.status_code == 200 and before.json()["success"] is True, before.text
        task_before = before.json()["requestId"]

        await asyncio.to_thread(own_redis.stop)
        assert not own_redis.running
        await assert_redis_down_answers(client, "conv-outage")

        port = own_redis.port
        await asyncio.to_thread(own_redis.start)  # same port, same directory
        assert own_redis.port == port
        recovered = await wait_status(client, "/ready", 200, 5)
        after = [
            await tool_call(client, "conv-outage", f"after the outage {i}", secret=WEBHOOK_SECRET) for i in range(3)
        ]
        print(f"\nRedis restarted: /ready 200 after {recovered:.2f} s; tool calls {[r.status_code for r in after]}")
        for response in after:
            assert response.status_code == 200 and response.json()["success"] is True, response.text
        assert (await client.get("/health")).json()["redis"] == "connected"

        # Data written before the outage survived it (AOF), seen by the service and by redis-cli alike.
        status = await client.post(
            "/agent-tools",
            json={"tool_name": "get_task_status", "conversation_id": "conv-outage", "task_id": task_before},
            headers={"X-Webhook-Secret": WEBHOOK_SECRET},
        )
        assert status.status_code == 200 and status.json()["success"] is True, status.text
        assert status.json()["status"] == "pending"

    direct = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        assert (await direct.hget(f"cursor_task:{task_before}", "status")) == "pending"
        for response in after:
            assert await direct.exists(f"cursor_task:{response.json()['requestId']}")
    finally:
        await direct.aclose()

    service.signal(signal.SIGTERM)
    assert await service.wait_exit(10) == 0, service.output()[-3000:]


@pytest.mark.slow
async def test_service_answers_in_bounded_time_while_redis_hangs_and_recovers(
    serve_factory: Any, runner: tuple[FakeCursorRunner, LocalServer], own_redis: RedisServer
) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP: a network partition, a stuck host)
    costs at most the Redis timeout per request, never a hang; SIGCONT and it all works again."""
    _, runner_server = runner
    own_redis.start()
    service = serve_factory(own_redis.url, runner_server.url, DRAIN_SECONDS="0.2", SHUTDOWN_TIMEOUT_SECONDS="5")
    await service.start()
    assert own_redis.process is not None
    try:
        async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=15) as client:
            await wait_status(client, "/ready", 200, 5)
            before = await tool_call(client, "conv-hung", "before the hang", secret=WEBHOOK_SECRET)
            assert before.status_code == 200 and before.json()["success"] is True, before.text

            own_redis.process.send_signal(signal.SIGSTOP)
            await assert_redis_down_answers(client, "conv-hung", how="hung")

            own_redis.process.send_signal(signal.SIGCONT)
            recovered = await wait_status(client, "/ready", 200, 5)
            after = await tool_call(client, "conv-hung", "after the hang", secret=WEBHOOK_SECRET)
            print(f"\nRedis resumed: /ready 200 after {recovered:.2f} s; tool call HTTP {after.status_code}")
            assert after.status_code == 200 and after.json()["success"] is True, after.text
            assert (await client.get("/health")).json()["redis"] == "connected"
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    service.signal(signal.SIGTERM)
    assert await service.wait_exit(10) == 0, service.output()[-3000:]


@pytest.mark.slow
async def test_serve_starts_while_redis_is_down_and_recovers_when_it_comes_up(
    serve_factory: Any, runner: tuple[FakeCursorRunner, LocalServer], own_redis: RedisServer
) -> None:
    _, runner_server = runner
    service = serve_factory(own_redis.url, runner_server.url, DRAIN_SECONDS="0.2", SHUTDOWN_TIMEOUT_SECONDS="5")
    health = await service.start()
    assert health["status"] == "ok" and health["redis"] == "disconnected", health
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=15) as client:
        await assert_redis_down_answers(client, "conv-cold-start")

        await asyncio.to_thread(own_redis.start)
        recovered = await wait_status(client, "/ready", 200, 5)
        response = await tool_call(client, "conv-cold-start", "now that redis is up", secret=WEBHOOK_SECRET)
        print(f"\nRedis came up: /ready 200 after {recovered:.2f} s; tool call HTTP {response.status_code}")
        assert response.status_code == 200 and response.json()["success"] is True, response.text
        assert (await client.get("/health")).json()["redis"] == "connected"
        task_id = response.json()["requestId"]

    direct = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        assert await direct.hget(f"cursor_task:{task_id}", "status") == "pending"
    finally:
        await direct.aclose()
    service.signal(signal.SIGTERM)
    assert await service.wait_exit(10) == 0, service.output()[-3000:]


# --- housekeeping finishes interrupted work -----------------------------------------------------------


class LogBuffer:
    """The service's JSON log lines, written to a buffer of this test's own (not capsys: its stream is
    closed before the stack's shutdown has finished logging)."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def capture(self, level: str, secrets: tuple[str, ...]) -> None:
        with contextlib.redirect_stdout(self.buffer):
            agent_logging.configure(level, secrets)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.buffer.getvalue().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out


@pytest.fixture
def service_logs() -> Iterator[LogBuffer]:
    yield LogBuffer()
    agent_logging.configure("info")  # back to stdout for whatever runs next


async def test_housekeeping_repairs_a_callback_cut_short_between_its_round_trips(
    service_logs: LogBuffer, make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "RECOVERY_GRACE", 0.0)
    stack = await make_stack(housekeeping_interval_seconds=0.5)
    service_logs.capture(stack.settings.log_level, stack.settings.secret_values)
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    stack.runner.callback_kind = "none"
    response = await stack.call_tool({"conversation_id": eleven_id, "prompt": "refactor the parser"})
    assert response.status_code == 200 and response.json()["success"] is True, response.text
    task_id = response.json()["requestId"]
    assert (await tool_message(stack.redis, conversation_id, task_id))["status"] == "pending"

    # What the callback's first round trip (the task update) leaves when the process dies before
    # its second one (conversation message + outbox + recordedAt).
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    result = {"success": True, "exitCode": 0, "output": "Parser refactored.", "error": None, "duration": "10ms"}
    summary = "The task finished successfully. Output: Parser refactored."
    await stack.redis.hset(
        f"cursor_task:{task_id}",
        mapping={
            "status": "completed",
            "result": orjson.dumps(result).decode(),
            "summary": summary,
            "completedAt": now,
            "callbackAt": now,
            "updatedAt": now,
            "delivery": "pending",
        },
    )

    updates = await stack.elevenlabs.wait_update(eleven_id, timeout=10)
    assert [u["context_id"] for u in updates] == [task_id], updates
    assert summary in updates[0]["text"]

    async def delivered() -> bool:
        return bool(await stack.redis.hget(f"cursor_task:{task_id}", "delivery") == "delivered")

    await eventually(delivered, timeout=5)
    task = await stack.task(task_id)
    assert task.get("recordedAt") and task["deliveredVia"] == "websocket", task
    message = await tool_message(stack.redis, conversation_id, task_id)
    assert message["status"] == "completed" and message["content"] == summary, message
    assert message["toolOutput"] == "Parser refactored."
    assert not await stack.redis.hexists(f"elevenlabs:pending:{{{conversation_id}}}", task_id)
    stream = await stack.redis.xrange(f"elevenlabs:events:{{{conversation_id}}}")
    assert [entry["taskId"] for _, entry in stream] == [task_id]
    repaired = [r for r in service_logs.records() if r.get("event") == events.CALLBACK_RECORDING_REPAIRED]
    assert [r.get("taskId") for r in repaired] == [task_id], repaired
    await voice.close()


async def test_a_paced_scan_sees_what_an_unpaced_one_does_and_pauses_between_batches(redis: aioredis.Redis) -> None:
    """Housekeeping walks the keyspace in small batches with a pause in between (housekeeping.Pacer):
    the summary it gets is the one an unpaced scan gets."""
    for n in range(30):
        fields = {"taskId": f"t{n}", "status": "completed" if n % 3 == 0 else "pending"}
        await redis.hset(f"cursor_task:t{n}", mapping=fields | {"createdAt": "2026-01-01T00:00:00.000Z"})
    store = TaskStore(redis)
    pauses = 0

    async def pace() -> None:
        nonlocal pauses
        pauses += 1

    paced = await store.summary(count=5, pace=pace)
    assert paced.by_status == (await store.summary()).by_status == {"completed": 10, "pending": 20}
    assert paced.stuck_pending == 20
    assert pauses >= 2, "one pause per batch read"


async def test_housekeeping_pushes_a_pending_result_again_without_a_new_registration(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "RECOVERY_GRACE", 0.0)
    stack = await make_stack(housekeeping_interval_seconds=0.5)
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    registered_at = await stack.redis.hget(f"elevenlabs:session:{conversation_id}", "registeredAt")
    stack.elevenlabs.push_mode = "reject"
    response = await stack.call_tool({"conversation_id": eleven_id, "prompt": "bump the version"})
    assert response.status_code == 200 and response.json()["success"] is True, response.text
    task_id = response.json()["requestId"]
    await stack.runner.wait_callbacks(1)
    assert stack.runner.callbacks[0][0] == 200, stack.runner.callbacks

    runtime = stack.service.app.state.runtime  # type: ignore[union-attr]

    async def push_attempted() -> bool:
        return runtime.delivery.inflight == 0

    await eventually(push_attempted, timeout=5)
    await stack.housekeeping_passes(2)  # one whole pass while the bridge still rejects
    assert await stack.redis.hexists(f"elevenlabs:pending:{{{conversation_id}}}", task_id)
    assert (await stack.task(task_id))["delivery"] == "pending"
    assert not stack.elevenlabs.conversations[eleven_id].contextual_updates

    stack.elevenlabs.push_mode = "accept"
    began = time.monotonic()
    updates = await stack.elevenlabs.wait_update(eleven_id, timeout=10)
    print(f"\npending result pushed by housekeeping {time.monotonic() - began:.2f} s after the bridge accepted")
    assert [u["context_id"] for u in updates] == [task_id], updates

    async def delivered() -> bool:
        return bool(await stack.redis.hget(f"cursor_task:{task_id}", "delivery") == "delivered")

    await eventually(delivered, timeout=5)
    assert not await stack.redis.hexists(f"elevenlabs:pending:{{{conversation_id}}}", task_id)
    # Nobody registered again: the session is the one registered before the callback.
    assert await stack.redis.hget(f"elevenlabs:session:{conversation_id}", "registeredAt") == registered_at
    await stack.housekeeping_passes(2)  # a confirmed result is not pushed again
    assert len(stack.elevenlabs.conversations[eleven_id].contextual_updates) == 1
    await voice.close()


def test_serve_freezes_what_start_up_built_out_of_the_gc() -> None:
    threshold = gc.get_threshold()
    try:
        serve._settle_gc()
        assert gc.get_freeze_count() > 1000  # this test process's modules, at least
        assert gc.get_threshold() == (serve.GC_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_answers_do_not_name_the_server_software() -> None:
    # uvicorn would add "server: uvicorn" to every answer (and check that header on each one).
    config = serve._config(object(), Settings(), 8000)
    assert config.server_header is False
