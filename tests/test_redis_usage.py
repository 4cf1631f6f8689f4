"""How the service uses Redis: round trips on the hot paths, and never a KEYS command."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from elevenlabs_agent.redis.server import RedisServer
from elevenlabs_agent.sim.cursor_runner import callback_body, split_secret
from tests.conftest import Stack, StackFactory
from tests.redis_proxy import RoundTripProxy


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[RoundTripProxy]:
    p = RoundTripProxy(redis_server.port)
    await p.start()
    yield p
    await p.stop()


async def _task_and_callback(stack: Stack, eleven_id: str) -> tuple[str, str, str]:
    stack.runner.callback_kind = "none"
    reply = (await stack.call_tool({"conversation_id": eleven_id, "prompt": "p"})).json()
    url, secret = split_secret(stack.runner.received[-1]["callbackUrl"])
    assert secret is not None
    return reply["taskId"], url, secret


async def test_round_trips_on_webhook_and_callback_paths(make_stack: StackFactory, proxy: RoundTripProxy) -> None:
    stack = await make_stack(redis_url=proxy.url)
    # The stack's app connects to the suite's Redis by default; this one must go through the proxy.
    assert stack.settings.redis_url == proxy.url
    conversation_id, eleven_id, voice = await stack.live_conversation(push=False)
    # Warm up: connection pool and script cache (the first EVALSHA after a Redis start loads it).
    task_id, url, secret = await _task_and_callback(stack, eleven_id)
    await stack.http.post(url, json=callback_body("completion", task_id), headers={"X-Webhook-Secret": secret})
    await stack.deliveries_settled()

    proxy.reset()
    task_id, url, secret = await _task_and_callback(stack, eleven_id)
    webhook_round_trips = proxy.round_trips
    # One script resolves the alias and writes the task, the pending message (with the conversation
    # indexes and the live-update PUBLISH: no ZADD) and the session's last call (stores/tool_calls.py).
    assert proxy.command_names() == ["EVALSHA"]

    proxy.reset()
    response = await stack.http.post(
        url, json=callback_body("completion", task_id), headers={"X-Webhook-Secret": secret}
    )
    assert response.status_code == 200
    await stack.deliveries_settled()
    assert await stack.redis.hexists(f"elevenlabs:pending:{{{conversation_id}}}", task_id)
    callback_round_trips = proxy.round_trips
    callback_commands = proxy.command_names()
    print(f"redis round trips: /agent-tools={webhook_round_trips} /callback={callback_round_trips}")
    # /agent-tools on one server: resolve the ElevenLabs id and record task + pending message (1). A
    # Redis Cluster takes two (the alias first).
    assert webhook_round_trips == 1
    # /callback on one server: one script completes the task (secret check, idempotency), records the
    # message and the outbox entry, marks it recorded and reads the live session for the delivery
    # (stores/results.py). A Redis Cluster takes three (tests/test_cluster.py).
    assert callback_round_trips == 1
    assert callback_commands == ["EVALSHA"]
    assert "KEYS" not in proxy.command_names()
    await voice.close()


def test_source_never_uses_keys_command(repo_root: Path) -> None:
    """KEYS blocks Redis for the whole keyspace walk; only SCAN is allowed (SPEC §6)."""
    keys_call = re.compile(r"(redis|pipe|client)\w*\.keys\(|[\"']KEYS[\"']")
    sources = list((repo_root / "src").rglob("*.py"))
    assert len(sources) > 30
    for path in sources:
        assert keys_call.search(path.read_text()) is None, path
