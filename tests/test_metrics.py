"""/metrics: valid exposition (promtool), Prometheus naming, and the figures the runbook relies on."""

from __future__ import annotations

import asyncio
import re

import pytest

from elevenlabs_agent import housekeeping, metrics
from elevenlabs_agent.sim.cursor_runner import callback_body, split_secret
from tests.conftest import Stack, StackFactory, eventually
from tests.helpers import promtool, value


async def test_exposition_passes_promtool_after_real_traffic(stack: Stack) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation()
    reply = (await stack.call_tool({"conversation_id": eleven_id, "prompt": "x"})).json()
    await stack.elevenlabs.wait_update(eleven_id)
    await stack.call_tool({"conversation_id": eleven_id, "prompt": "x"}, headers={"X-Webhook-Secret": "wrong"})
    await stack.http.get("/agent-conversations/api/does-not-exist")
    response = await stack.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    check = await asyncio.create_subprocess_exec(
        promtool(),
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(check.communicate(response.content), 30)
    assert check.returncode == 0, output.decode()
    text = response.text
    assert reply["taskId"] not in text and conversation_id not in text and eleven_id not in text  # no ids in labels
    assert stack.webhook_secret not in text and stack.runner_secret not in text
    await voice.close()


def test_metric_names_follow_prometheus_conventions() -> None:
    collectors = [v for v in vars(metrics).values() if hasattr(v, "_name") and hasattr(v, "_type")]
    assert len(collectors) >= 15
    for collector in collectors:
        name, kind = collector._name, collector._type
        assert re.fullmatch(r"elevenlabs_agent_[a-z_]+", name), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        assert not name.endswith("_total"), f"{name}: the client appends _total to counters"
        assert not any(label.endswith("id") for label in collector._labelnames), f"{name} has an id label"


async def test_domain_counters_follow_the_flow(make_stack: StackFactory) -> None:
    stack = await make_stack()
    before = (await stack.http.get("/metrics")).text
    _, eleven_id, voice = await stack.live_conversation()
    stack.runner.callback_kind = "none"
    task_id = (await stack.call_tool({"conversation_id": eleven_id, "prompt": "x"})).json()["taskId"]
    url, secret = split_secret(stack.runner.received[-1]["callbackUrl"])
    assert secret
    body = callback_body("completion", task_id)
    assert (await stack.http.post(url, json=body, headers={"X-Webhook-Secret": "forged"})).status_code == 401
    assert (await stack.http.post(url, json=body, headers={"X-Webhook-Secret": secret})).status_code == 200
    assert (await stack.http.post(url, json=body, headers={"X-Webhook-Secret": secret})).status_code == 200
    await stack.http.post(url, json=callback_body("completion", "no-such-task"), headers={"X-Webhook-Secret": secret})
    await stack.elevenlabs.wait_update(eleven_id)

    async def pushed() -> bool:
        text = (await stack.http.get("/metrics")).text
        return value(text, "elevenlabs_agent_deliveries_total", channel="websocket", outcome="delivered") > value(
            before, "elevenlabs_agent_deliveries_total", channel="websocket", outcome="delivered"
        )

    await eventually(pushed)
    after = (await stack.http.get("/metrics")).text

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("elevenlabs_agent_webhooks_total", outcome="task_started") == 1
    assert delta("elevenlabs_agent_dispatches_total", outcome="accepted") == 1
    assert delta("elevenlabs_agent_dispatch_duration_seconds_count") == 1
    assert delta("elevenlabs_agent_callbacks_total", outcome="accepted") == 1
    assert delta("elevenlabs_agent_callbacks_total", outcome="duplicate") == 1
    assert delta("elevenlabs_agent_callbacks_total", outcome="unauthorized") == 1
    assert delta("elevenlabs_agent_callbacks_total", outcome="unknown_task") == 1
    assert delta("elevenlabs_agent_http_requests_total", route="/callback", method="POST", status="401") == 1
    assert delta("elevenlabs_agent_http_request_duration_seconds_count", route="/agent-tools") == 1
    await voice.close()


async def test_keyspace_gauges_come_from_a_bounded_background_scan(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "PING_INTERVAL", 0.1)
    stack = await make_stack(housekeeping_interval_seconds=0.2)
    _, eleven_id, voice = await stack.live_conversation(push=False)
    stack.runner.callback_kind = "none"
    for _ in range(3):
        await stack.call_tool({"conversation_id": eleven_id, "prompt": "x"})
    await stack.redis.hset(
        "cursor_task:ancient",
        mapping={"taskId": "ancient", "status": "pending", "createdAt": "2020-01-01T00:00:00.000Z"},
    )
    stack.runner.callback_kind = "completion"
    await stack.call_tool({"conversation_id": eleven_id, "prompt": "y"})
    await stack.runner.wait_callbacks(1)

    async def gauges_current() -> bool:
        text = (await stack.http.get("/metrics")).text
        return (
            value(text, "elevenlabs_agent_pending_tasks") == 4
            and value(text, "elevenlabs_agent_stuck_pending_tasks") == 1
            and value(text, "elevenlabs_agent_results_waiting") == 1
            and value(text, "elevenlabs_agent_active_sessions") == 1
            and value(text, "elevenlabs_agent_redis_up") == 1
        )

    await eventually(gauges_current)
    text = (await stack.http.get("/metrics")).text
    assert value(text, "elevenlabs_agent_oldest_pending_task_age_seconds") > 86_400 * 365
    assert value(text, "elevenlabs_agent_keyspace_scan_timestamp_seconds") > 0
    assert value(text, "elevenlabs_agent_draining") == 0
    await voice.close()
