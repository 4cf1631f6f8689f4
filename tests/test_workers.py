"""WORKERS > 1: one socket, several worker processes under a supervisor, metrics combined across
workers, crashed workers replaced, drain on SIGTERM, no orphans when the supervisor dies."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from elevenlabs_agent import events
from elevenlabs_agent.redis.server import RedisServer
from tests.helpers import BROWSER_IDENTITY, promtool, value
from tests.serve_proc import ServeProcess, ServeProcesses

pytestmark = pytest.mark.slow


@pytest.fixture
def processes(tmp_path: Path, redis_server: RedisServer) -> Iterator[ServeProcesses]:
    if not redis_server.running:
        redis_server.start()
    started = ServeProcesses(tmp_path, REDIS_URL=redis_server.url, WORKERS="2", DRAIN_SECONDS="0.5")
    yield started
    started.kill_all()
    for pid in seen_workers:
        with_suppressed_kill(pid)


seen_workers: set[int] = set()


def workers_of(service: ServeProcess) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(service.pid)], capture_output=True, text=True).stdout
    pids = sorted(int(pid) for pid in out.split())
    seen_workers.update(pids)  # killed at the end of the test whatever happens to the supervisor
    return pids


def with_suppressed_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running (an exited orphan stays a zombie until this container's init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(predicate: object, timeout: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def start_all(service: ServeProcess) -> None:
    """Start and wait until both workers finished starting (the first one answers /health alone)."""
    service.start_blocking()
    started = lambda: sum(r["event"] == events.SERVICE_STARTED for r in service.records()) == 2  # noqa: E731
    wait_for(started, timeout=40)


def test_workers_share_the_port_and_metrics_add_up(processes: ServeProcesses) -> None:
    service = processes.new()
    start_all(service)
    assert len(workers_of(service)) == 2
    # A new connection per request, so the kernel spreads them over both workers' accept calls.
    with httpx.Client(
        base_url=service.url, headers=BROWSER_IDENTITY, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        for _ in range(60):
            assert client.get("/config").status_code == 200

        # A request is counted just after its answer is sent: the other worker may serve /metrics
        # before the last one is.
        def counted() -> float:
            nonlocal text
            text = client.get("/metrics").text
            return value(text, "elevenlabs_agent_http_requests_total", route="/config", method="GET", status="200")

        text = ""
        wait_for(lambda: counted() >= 60, timeout=5)
    assert value(text, "elevenlabs_agent_http_requests_total", route="/config", method="GET", status="200") == 60
    check = subprocess.run([promtool(), "check", "metrics"], input=text.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_crashed_worker_is_replaced(processes: ServeProcesses) -> None:
    service = processes.new()
    start_all(service)
    first, second = workers_of(service)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(workers_of(service)) == 2 and first not in workers_of(service), timeout=15)
    assert second in workers_of(service)
    assert httpx.get(service.url + "/health").status_code == 200
    exits = [r for r in service.records() if r["event"] == events.WORKER_EXITED]
    assert exits and exits[0]["pid"] == first and exits[0]["exitCode"] == -signal.SIGKILL


def test_sigterm_drains_every_worker_and_exits_0(processes: ServeProcesses) -> None:
    service = processes.new()
    start_all(service)
    pids = workers_of(service)
    service.terminate()
    assert service.wait(timeout=30) == 0
    assert not any(alive(pid) for pid in pids)
    stopped = [r for r in service.records() if r["event"] == events.SERVICE_STOPPED]
    assert len(stopped) == 2, service.output()


def test_workers_stop_when_the_supervisor_is_killed(processes: ServeProcesses) -> None:
    service = processes.new()
    service.start_blocking()
    pids = workers_of(service)
    service.kill()
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=40)
