"""The `elevenlabs-agent` command line (SPEC §7), run as real subprocesses."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from elevenlabs_agent.redis.server import RedisServer, free_port
from tests.helpers import BROWSER_IDENTITY, clean_env, run_cli
from tests.serve_proc import ENTRY_POINT, ServeProcess, ServeProcesses

WEBHOOK_SECRET = "cli-test-webhook-secret-0123456789"


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def redis_servers_using(directory: Path) -> list[int]:
    """Pids of redis-server processes working in `directory` (redis-server chdirs to its --dir and
    rewrites its command line to `redis-server host:port`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "cmdline").read_bytes().split(b"\0")[0]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if b"redis-server" in name and cwd.resolve().is_relative_to(directory.resolve()):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Any]:
    """`factory(**env)`: an `elevenlabs-agent serve` process (the installed script), not started yet."""
    processes = ServeProcesses(tmp_path, WEBHOOK_SECRET=WEBHOOK_SECRET)
    directories: list[Path] = []

    def factory(**env: str) -> ServeProcess:
        if "EMBEDDED_REDIS_DIR" in env:
            directories.append(Path(env["EMBEDDED_REDIS_DIR"]))
        cursor_runner = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        return processes.new(argv=[str(ENTRY_POINT), "serve"], **{"CURSOR_RUNNER_URL": cursor_runner, **env})

    yield factory
    processes.kill_all()
    for directory in directories:  # a crashed serve may leave its embedded redis-server behind
        for pid in redis_servers_using(directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- help and configuration errors ----------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    result = subprocess.run([str(ENTRY_POINT), "--help"], env=clean_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    commands = re.findall(r"^\s{2}(\w[\w-]*)\s", result.stdout.split("Commands:")[1], re.M)
    expected = {"serve", "demo", "health", "stats", "sessions", "tasks", "conversations", "restore"}  # SPEC §7
    assert expected <= set(commands), result.stdout


def test_module_entry_point_matches_the_script() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert "elevenlabs-agent" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "value"),
    [("PORT", "notanumber"), ("PORT", "70000"), ("DRAIN_SECONDS", "-1"), ("ELEVENLABS_AGENT_ENABLED", "maybe")],
)
def test_invalid_configuration_exits_non_zero_with_one_clear_line(variable: str, value: str) -> None:
    result = run_cli("serve", env=clean_env(**{variable: value}), timeout=30)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and "invalid configuration" in lines[0].lower(), lines[0]
    assert result.stdout.strip() == ""


# --- demo -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_round_trip_succeeds_and_prints_a_timeline() -> None:
    result = subprocess.run([str(ENTRY_POINT), "demo"], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    timeline = [line for line in result.stdout.splitlines() if re.match(r"^\[\s*\d+\.\d ms\] ", line)]
    assert len(timeline) >= 8, result.stdout
    stamps = [float(re.findall(r"[\d.]+", line)[0]) for line in timeline]
    assert stamps == sorted(stamps)
    assert any("contextual_update" in line for line in timeline)
    assert "redis-server stopped" in timeline[-1]


# --- serve ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_with_embedded_redis_persists_and_shuts_down_cleanly(service_factory: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "embedded"
    service = service_factory(EMBEDDED_REDIS_DIR=str(data_dir), DRAIN_SECONDS="0.5")
    health = service.start_blocking()
    assert health["status"] == "ok" and health["redis"] == "connected", health
    assert httpx.get(f"{service.url}/config", headers=BROWSER_IDENTITY).json()["config"]["redisUrl"] != "configured"

    created = httpx.post(
        f"{service.url}/agent-conversations/api/new",
        headers=BROWSER_IDENTITY,
        json={"conversationId": "conv-persisted"},
    )
    assert created.status_code == 201, created.text

    started = next(r for r in service.records() if r["event"] == "redis.embedded_started")
    redis_port = int(started["port"])
    assert port_open(redis_port)
    assert redis_servers_using(data_dir), "no redis-server runs with the data directory"
    files = {p.name for p in data_dir.rglob("*")}
    assert "appendonlydir" in files or any(name.endswith(".aof") for name in files), files

    service.terminate()
    began = time.monotonic()
    assert service.wait(timeout=0.5 + 10) == 0, service.output()
    assert time.monotonic() - began < 0.5 + 5
    events = [r["event"] for r in service.records()]
    assert "service.stopping" in events and "service.stopped" in events and "redis.embedded_stopped" in events
    assert WEBHOOK_SECRET not in service.output()

    deadline = time.monotonic() + 5
    while (port_open(redis_port) or redis_servers_using(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not port_open(redis_port), "the embedded redis-server still listens after serve exited"
    assert not redis_servers_using(data_dir), "the embedded redis-server outlived serve"

    # Data survives a restart of serve on the same directory.
    again = service_factory(EMBEDDED_REDIS_DIR=str(data_dir), DRAIN_SECONDS="0.5")
    again.start_blocking()
    assert httpx.get(f"{again.url}/agent-conversations/api/conv-persisted", headers=BROWSER_IDENTITY).status_code == 200
    again.terminate()
    assert again.wait(timeout=15) == 0, again.output()


@pytest.mark.slow
def test_serve_with_redis_url_drains_then_exits(service_factory: Any, redis_server: RedisServer) -> None:
    if not redis_server.running:
        redis_server.start()
    service = service_factory(REDIS_URL=redis_server.url, DRAIN_SECONDS="2")
    health = service.start_blocking()
    assert health["redis"] == "connected", health
    assert httpx.get(f"{service.url}/config", headers=BROWSER_IDENTITY).json()["config"]["redisUrl"] == "configured"
    assert httpx.get(f"{service.url}/ready").status_code == 200

    response = httpx.post(
        f"{service.url}/agent-conversations/api/new",
        headers=BROWSER_IDENTITY,
        json={"conversationId": "conv-cli-external"},
    )
    assert response.status_code == 201, response.text
    client = redis_sync.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert client.exists("elevenlabs:conversation:conv-cli-external")

        service.terminate()
        began = time.monotonic()
        saw_draining = False
        while time.monotonic() - began < 1.5:
            ready = httpx.get(f"{service.url}/ready", timeout=1)
            health_response = httpx.get(f"{service.url}/health", timeout=1)
            assert health_response.status_code == 200
            if ready.status_code == 503:
                saw_draining = True
                assert ready.json()["status"] == "fail"
                assert health_response.json()["draining"] is True
                break
            time.sleep(0.05)
        assert saw_draining, "/ready never answered 503 during the drain window"
        assert service.process is not None and service.process.poll() is None, "exited before the drain ended"

        assert service.wait(timeout=2 + 10) == 0, service.output()
        assert time.monotonic() - began >= 1.5
        # serve must not stop a Redis it does not own.
        assert client.ping()
    finally:
        client.close()


@pytest.mark.slow
def test_serve_exits_promptly_with_an_open_event_stream(service_factory: Any, redis_server: RedisServer) -> None:
    """A browser holding the SSE stream open must not keep the process alive past the drain."""
    if not redis_server.running:
        redis_server.start()
    service = service_factory(REDIS_URL=redis_server.url, DRAIN_SECONDS="0.5", SSE_KEEPALIVE_SECONDS="60")
    service.start_blocking()
    created = httpx.post(
        f"{service.url}/agent-conversations/api/new", headers=BROWSER_IDENTITY, json={"conversationId": "conv-cli-sse"}
    )
    assert created.status_code == 201, created.text
    received: list[bytes] = []

    def read_stream() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream(
                "GET",
                f"{service.url}/agent-conversations/api/conv-cli-sse/events",
                headers=BROWSER_IDENTITY,
                timeout=60,
            ) as stream,
        ):
            assert stream.status_code == 200
            for chunk in stream.iter_raw():
                received.append(chunk)

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert received, "the event stream sent nothing"

    service.terminate()
    began = time.monotonic()
    assert service.wait(timeout=0.5 + 10) == 0, service.output()
    assert time.monotonic() - began < 0.5 + 5
    reader.join(5)
    assert not reader.is_alive(), "the stream was not closed when serve exited"
