"""Small things many test modules share."""

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
import websockets.asyncio.client
from prometheus_client.parser import text_string_to_metric_families

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
