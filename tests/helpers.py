"""Small things many test modules share."""

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets
import websockets.asyncio.client
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import RedisCluster

from elevenlabs_agent.settings import Settings

REPO = Path(__file__).resolve().parent.parent

# The browser routes' default policy (BROWSER_AUTH=proxy): an identity header from a trusted
# (loopback) proxy. Test clients of browser routes send it as the front end's proxy would.
BROWSER_IDENTITY = {"X-Forwarded-User": "test-user"}


def connect_ws(uri: str, **options: Any) -> websockets.asyncio.client.connect:
    """`websockets.connect` as a browser behind the authenticating proxy: with the identity header."""
    headers = {**BROWSER_IDENTITY, **dict(options.pop("additional_headers", None) or {})}
    return websockets.connect(uri, additional_headers=headers, **options)


# How long a test waits for a live-update frame before failing.
FRAME_TIMEOUT = 10.0


async def next_frame(ws: Any, timeout: float = FRAME_TIMEOUT, *, skip_resync: bool = True) -> dict[str, Any]:
    """The next frame; a `resync` (sent when the instance's Pub/Sub subscription was established after
    this socket subscribed, e.g. right after startup) is skipped unless asked for."""
    while True:
        frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
        if not (skip_resync and frame.get("reason") == "resync"):
            return frame


def clean_env(**overrides: str) -> dict[str, str]:
    """The current environment without any variable the service reads, plus `overrides`."""
    names = {name.upper() for name in Settings.model_fields} | {"PUBLIC_URL"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(overrides)
    return env


# What must never appear in an answer: a Python stack trace, or the paths of one.
TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages")


def assert_json_error(response: httpx.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    """A JSON `{"success": false, "error": ...}` with the expected status, and nothing of a stack trace."""
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert isinstance(body, dict), body
    assert body["success"] is False, body
    assert isinstance(body["error"], str) and body["error"].strip(), body
    for marker in TRACEBACK_MARKERS:
        assert marker not in response.text, response.text[:500]
    return body


async def tool_call(
    client: httpx.AsyncClient, conversation_ref: str, prompt: str = "run the tests", *, secret: str
) -> httpx.Response:
    """The ElevenLabs server tool webhook, as ElevenLabs calls it."""
    return await client.post(
        "/agent-tools",
        json={"conversation_id": conversation_ref, "prompt": prompt},
        headers={"X-Webhook-Secret": secret},
    )


# --- the command line, as an operator runs it ------------------------------------------------------


def run_cli(
    *args: str | Path,
    redis_url: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`python -m elevenlabs_agent ARGS` in `env`, by default a clean environment with REDIS_URL set to
    `redis_url` (unset when None)."""
    if env is None:
        env = clean_env() if redis_url is None else clean_env(REDIS_URL=redis_url)
    return subprocess.run(
        [sys.executable, "-m", "elevenlabs_agent", *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def run_cli_async(*args: str | Path, timeout: float = 60.0) -> tuple[int, str, str]:
    """`run_cli` for tests whose service runs in their own event loop (a blocking wait would stall it):
    (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "elevenlabs_agent",
        *map(str, args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(NO_COLOR="1"),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: int | None = 1) -> str:
    """Non-zero exit (exactly `code` unless None), no traceback, stderr is one line "Error: ..."."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    if code is not None:
        assert result.returncode == code, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:"), lines[0]
    assert len(lines[0]) > len("Error: ") + 10, lines[0]
    return lines[0]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The standard output of a command that succeeded without a trace."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return orjson.loads(ok(result))


# --- Prometheus ------------------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    local = REPO / ".tools" / "bin" / "promtool"
    if local.is_file():
        return str(local)
    pytest.fail("promtool not found on PATH nor at .tools/bin/promtool: run scripts/bootstrap --test to install it")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition, by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 if absent)."""
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


# --- shapes ----------------------------------------------------------------------------------------


def assert_iso_utc(value: Any) -> datetime:
    assert isinstance(value, str) and value.endswith("Z"), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 60
    return parsed


def assert_conversation_shape(body: dict[str, Any]) -> None:
    assert isinstance(body["conversationId"], str) and body["conversationId"]
    assert isinstance(body["messages"], list)
    assert isinstance(body["metadata"], dict)
    created = assert_iso_utc(body["createdAt"])
    accessed = assert_iso_utc(body["lastAccessedAt"])
    assert accessed >= created
    if "agentId" in body:
        assert isinstance(body["agentId"], str)


# --- Redis Cluster --------------------------------------------------------------------------------


def nodes_holding(client: aioredis.Redis, keys: list[str]) -> set[str]:
    assert isinstance(client, RedisCluster)
    return {client.get_node_from_key(key).name for key in keys}


# --- server-sent events ----------------------------------------------------------------------------


@dataclass
class SSEEvent:
    id: str | None
    event: str | None
    data: dict[str, Any]
    lines: list[str] = field(default_factory=list)

    @property
    def task_id(self) -> str:
        task_id: str = self.data["taskId"]
        return task_id


class SSEReader:
    """Parses a text/event-stream response into events; `: keep-alive` comments are counted."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.keepalives = 0
        self.retry: str | None = None

    async def _block(self) -> list[str]:
        block: list[str] = []
        while True:
            line = await anext(self._lines)
            if line == "":
                if block:
                    return block
                continue
            block.append(line)

    async def _next(self) -> SSEEvent | None:
        """The next event, or None after a block without data (comment / retry)."""
        block = await self._block()
        event_id: str | None = None
        name: str | None = None
        data: list[str] = []
        for line in block:
            if line.startswith(":"):
                if line[1:].strip() == "keep-alive":
                    self.keepalives += 1
                continue
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "id":
                event_id = value
            elif key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "retry":
                self.retry = value
        if not data:
            return None
        return SSEEvent(event_id, name, orjson.loads("\n".join(data)), block)

    async def next_event(self, timeout: float = 10.0) -> SSEEvent:
        async with asyncio.timeout(timeout):
            while True:
                event = await self._next()
                if event is not None:
                    return event

    async def events(self, count: int, timeout: float = 10.0) -> list[SSEEvent]:
        return [await self.next_event(timeout) for _ in range(count)]

    async def wait_keepalive(self, timeout: float = 10.0) -> None:
        """Read until a keep-alive: the subscriber is then waiting for live events. No event may come first."""
        seen = self.keepalives
        async with asyncio.timeout(timeout):
            while self.keepalives == seen:
                event = await self._next()
                assert event is None, f"unexpected event {event}"

    async def expect_quiet(self, keepalives: int = 2, timeout: float = 15.0) -> None:
        """No event arrives while `keepalives` keep-alive comments go by."""
        target = self.keepalives + keepalives
        async with asyncio.timeout(timeout):
            while self.keepalives < target:
                event = await self._next()
                assert event is None, f"unexpected event {event}"


@contextlib.asynccontextmanager
async def subscribe(stack: Any, conversation_id: str, last_event_id: str | None = None) -> AsyncIterator[SSEReader]:
    """The conversation's event stream on `stack.http` (a tests.conftest.Stack)."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with stack.http.stream(
        "GET", f"/agent-conversations/api/{conversation_id}/events", headers=headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SSEReader(response)


# --- logs --------------------------------------------------------------------------------------------


class Captured:
    """Accumulates what capsys has captured so far (readouterr() consumes it)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.out = ""
        self.err = ""

    def read(self) -> str:
        captured = self.capsys.readouterr()
        self.out += captured.out
        self.err += captured.err
        return self.out

    def records(self) -> list[dict[str, Any]]:
        lines = [line for line in self.read().splitlines() if line.strip()]
        parsed = []
        for line in lines:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                pytest.fail(f"stdout line is not JSON: {line[:300]!r}")
            assert isinstance(record, dict), line
            assert isinstance(record.get("event"), str) and record["event"], line
            parsed.append(record)
        return parsed
