"""`elevenlabs-agent health`: the probe scripts and operators run against an instance."""

from __future__ import annotations

import orjson

from elevenlabs_agent.redis.server import RedisServer, free_port
from tests.conftest import Stack
from tests.helpers import run_cli_async


async def test_healthy_instance_exits_0_with_one_line(stack: Stack) -> None:
    code, out, _ = await run_cli_async("health", "--url", stack.service.url)
    assert code == 0
    assert out.count("\n") == 1 and out.startswith("healthy: ") and "redis=pass" in out


async def test_json_output(stack: Stack) -> None:
    code, out, _ = await run_cli_async("health", "--url", stack.service.url, "--json")
    assert code == 0
    body = orjson.loads(out)
    assert body["healthy"] is True and body["ready"]["status"] == "pass"


async def test_redis_down_exits_1(stack: Stack, redis_server: RedisServer) -> None:
    redis_server.stop()
    try:
        code, out, _ = await run_cli_async("health", "--url", stack.service.url)
        assert code == 1 and out.startswith("unhealthy: ") and "redis=fail" in out
    finally:
        redis_server.start()


async def test_nothing_listening_exits_1_without_traceback() -> None:
    code, out, err = await run_cli_async("health", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "1")
    assert code == 1
    assert out.startswith("unhealthy: ") and "did not answer" in out
    assert "Traceback" not in out + err
