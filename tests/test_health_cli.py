"""`elevenlabs-agent health`: the probe scripts and operators run against an instance."""

from __future__ import annotations

import asyncio
import sys

import orjson

from elevenlabs_agent.redis.server import RedisServer, free_port
from tests.conftest import Stack


async def run_health(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "elevenlabs_agent",
        "health",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_healthy_instance_exits_0_with_one_line(stack: Stack) -> None:
    code, out, _ = await run_health("--url", stack.service.url)
    assert code == 0
    assert out.count("\n") == 1 and out.startswith("healthy: ") and "redis=pass" in out


async def test_json_output(stack: Stack) -> None:
    code, out, _ = await run_health("--url", stack.service.url, "--json")
    assert code == 0
    body = orjson.loads(out)
    assert body["healthy"] is True and body["ready"]["status"] == "pass"


async def test_redis_down_exits_1(stack: Stack, redis_server: RedisServer) -> None:
    redis_server.stop()
    try:
        code, out, _ = await run_health("--url", stack.service.url)
        assert code == 1 and out.startswith("unhealthy: ") and "redis=fail" in out
    finally:
        redis_server.start()


async def test_nothing_listening_exits_1_without_traceback() -> None:
    code, out, err = await run_health("--url", f"http://127.0.0.1:{free_port()}", "--timeout", "1")
    assert code == 1
    assert out.startswith("unhealthy: ") and "did not answer" in out
    assert "Traceback" not in out + err
