"""Delivery of results into the live conversation (SPEC §1, §5, §6): SSE relay, websocket push, replay.

Everything goes over real sockets: the service on a loopback port, a real redis-server, the fake
cursor-runner and the fake ElevenLabs (its conversation socket and its push bridge).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from elevenlabs_agent.sim.cursor_runner import callback_body, split_secret
from tests.conftest import Stack, eventually
from tests.helpers import subscribe

# --- helpers --------------------------------------------------------------------------------------


def pending_key(conversation_id: str) -> str:
    return f"elevenlabs:pending:{{{conversation_id}}}"


def events_url(conversation_id: str) -> str:
    return f"/agent-conversations/api/{conversation_id}/events"


async def metric(stack: Stack, name: str, **labels: str) -> float:
    """One sample of the service's /metrics (0 if absent)."""
    text = (await stack.http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def deliveries(stack: Stack, channel: str, outcome: str) -> float:
    return await metric(stack, "elevenlabs_agent_deliveries_total", channel=channel, outcome=outcome)


async def delivery_attempts(stack: Stack) -> float:
    """All delivery outcomes counted so far (any channel): grows once per delivery attempt."""
    text = (await stack.http.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "elevenlabs_agent_deliveries_total"
    )


async def wait_deliveries(stack: Stack, channel: str, outcome: str, at_least: float) -> None:
    async def reached() -> bool:
        return await deliveries(stack, channel, outcome) >= at_least

    await eventually(reached)


async def finish_task(stack: Stack, task_id: str) -> None:
    """POST the completion callback the way cursor-runner does (secret moved from the URL to headers)."""
    sent = next(r for r in stack.runner.received if r["id"] == task_id)
    url, secret = split_secret(sent["callbackUrl"])
    assert secret
    response = await stack.http.post(
        url,
        json=callback_body("completion", task_id, sent["prompt"]),
        headers={"X-Webhook-Secret": secret, "X-Cursor-Runner-Secret": secret},
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"


def manual_callbacks(stack: Stack) -> None:
    """The fake cursor-runner accepts tasks but leaves the callbacks to the test."""
    stack.runner.callback_kind = "none"


def updates(stack: Stack, eleven_id: str) -> list[dict[str, Any]]:
    conversation = stack.elevenlabs.conversations.get(eleven_id)
    return conversation.contextual_updates if conversation else []


async def pending_ids(stack: Stack, conversation_id: str) -> set[str]:
    return set(await stack.redis.hkeys(pending_key(conversation_id)))


# --- relay (SSE) ----------------------------------------------------------------------------------


async def test_relay_result_reaches_subscriber_and_stays_pending_until_acked(stack: Stack) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation(push=False)
    relayed_before = await deliveries(stack, "relay", "published")
    async with subscribe(stack, conversation_id) as sse:
        await sse.wait_keepalive()
        task_id = await stack.start_task(eleven_id, "Fix the login bug")
        event = await sse.next_event()

    assert event.event == "task_update"
    assert event.id and event.data["eventId"] == event.id
    assert [line.split(":", 1)[0] for line in event.lines] == ["id", "event", "data"]
    assert event.data["taskId"] == task_id
    assert event.data["status"] == "completed"
    assert event.data["conversationId"] == conversation_id
    assert isinstance(event.data["text"], str) and task_id in event.data["text"]
    assert "finished successfully" in event.data["text"]

    # The relay path was chosen (no push URL), so nothing was pushed into the ElevenLabs conversation.
    await wait_deliveries(stack, "relay", "published", relayed_before + 1)
    assert updates(stack, eleven_id) == []
    assert stack.elevenlabs.conversation_opens == 1

    # Not delivered until the browser acknowledges it.
    raw = await stack.redis.hget(pending_key(conversation_id), task_id)
    assert raw is not None and orjson.loads(raw)["eventId"] == event.id
    task = await stack.task(task_id)
    assert task["status"] == "completed" and task["delivery"] == "pending"

    response = await stack.http.post(f"{events_url(conversation_id)}/ack", json={"taskIds": [task_id]})
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "acknowledged": [task_id]}
    assert await stack.redis.exists(pending_key(conversation_id)) == 0
    task = await stack.task(task_id)
    assert task["delivery"] == "delivered" and task["deliveredVia"] == "relay"
    assert task["deliveredAt"].endswith("Z")

    # A repeated ack changes nothing.
    again = await stack.http.post(f"{events_url(conversation_id)}/ack", json={"taskIds": [task_id]})
    assert again.status_code == 200 and again.json()["acknowledged"] == []
    await voice.close()


async def test_ack_validates_task_ids(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    url = f"{events_url(conversation_id)}/ack"
    for body in ({}, {"taskIds": []}, {"taskIds": "abc"}, {"taskIds": ["bad id"]}, {"taskIds": [1]}, []):
        response = await stack.http.post(url, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["success"] is False


@pytest.mark.slow
async def test_sse_replays_result_published_while_nobody_listened(stack: Stack) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation(push=False)
    manual_callbacks(stack)
    task_id = await stack.start_task(eleven_id)
    await finish_task(stack, task_id)
    assert await pending_ids(stack, conversation_id) == {task_id}

    async with subscribe(stack, conversation_id) as sse:
        event = await sse.next_event()
        assert event.task_id == task_id and event.event == "task_update"
        await sse.expect_quiet()  # offered once per subscriber, no duplicate

    # Unacknowledged: the next subscriber gets it again.
    async with subscribe(stack, conversation_id) as sse:
        assert (await sse.next_event()).task_id == task_id

    await stack.http.post(f"{events_url(conversation_id)}/ack", json={"taskIds": [task_id]})
    async with subscribe(stack, conversation_id) as sse:
        await sse.expect_quiet()
    assert updates(stack, eleven_id) == []
    await voice.close()


@pytest.mark.slow
async def test_sse_live_event_for_subscriber_connected_before_callback(stack: Stack) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation(push=False)
    manual_callbacks(stack)
    task_id = await stack.start_task(eleven_id)
    async with subscribe(stack, conversation_id) as sse:
        await sse.wait_keepalive()  # subscribed and waiting: what comes now is live
        await finish_task(stack, task_id)
        event = await sse.next_event()
        assert event.task_id == task_id and event.data["status"] == "completed"
        await sse.expect_quiet(keepalives=1)
    await voice.close()


@pytest.mark.slow
async def test_sse_resume_with_last_event_id(stack: Stack) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation(push=False)
    manual_callbacks(stack)
    t1, t2, t3 = [await stack.start_task(eleven_id, f"task {n}") for n in (1, 2, 3)]

    async with subscribe(stack, conversation_id) as sse:
        await sse.wait_keepalive()
        await finish_task(stack, t1)
        first = await sse.next_event()
    assert first.task_id == t1 and first.id

    await finish_task(stack, t2)
    await finish_task(stack, t3)

    # DeliveryService.subscribe: with Last-Event-ID, first the pending results the client saw but never
    # acknowledged (event 1), then everything after Last-Event-ID (2, 3), then live events; nothing twice.
    async with subscribe(stack, conversation_id, last_event_id=first.id) as sse:
        resumed = await sse.events(3)
        await sse.expect_quiet()
    assert [e.task_id for e in resumed] == [t1, t2, t3]
    assert resumed[0].id == first.id
    ids = [e.id for e in resumed]
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 3

    # Once event 1 is acknowledged, resuming after it yields only 2 and 3.
    await stack.http.post(f"{events_url(conversation_id)}/ack", json={"taskIds": [t1]})
    async with subscribe(stack, conversation_id, last_event_id=first.id) as sse:
        assert [e.task_id for e in await sse.events(2)] == [t2, t3]
        await sse.expect_quiet()

    # Everything acknowledged, resuming after the last event: nothing.
    await stack.http.post(f"{events_url(conversation_id)}/ack", json={"taskIds": [t2, t3]})
    async with subscribe(stack, conversation_id, last_event_id=resumed[2].id) as sse:
        await sse.expect_quiet()
    await voice.close()


@pytest.mark.parametrize("bad", ["bogus", "1-2-3", "-1", "12-", "99999999999999999999-0", "1-99999999999999999999"])
async def test_sse_invalid_last_event_id_is_400(stack: Stack, bad: str) -> None:
    conversation_id = await stack.create_conversation()
    response = await stack.http.get(events_url(conversation_id), headers={"Last-Event-ID": bad}, timeout=5)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["success"] is False and response.json()["error"]


@pytest.mark.parametrize("bad", ["bogus", "\u0661\u0662\u0663-0", "\u00b2", "99999999999999999999"])
async def test_sse_invalid_last_event_id_query_parameter_is_400(stack: Stack, bad: str) -> None:
    """The `lastEventId` query parameter (for clients that cannot set headers) is validated the same way."""
    conversation_id = await stack.create_conversation()
    response = await stack.http.get(events_url(conversation_id), params={"lastEventId": bad}, timeout=5)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["success"] is False


async def test_sse_unknown_conversation_is_404_and_bad_id_400(stack: Stack) -> None:
    response = await stack.http.get(events_url("no-such-conversation"))
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["success"] is False
    response = await stack.http.get(events_url("bad%20id"))
    assert response.status_code == 400
    assert response.json()["success"] is False


# --- websocket push -------------------------------------------------------------------------------


async def test_websocket_push_reaches_conversation_without_opening_session_url(stack: Stack) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    task_id = await stack.start_task(eleven_id)
    got = await stack.elevenlabs.wait_update(eleven_id)
    assert got == [{"type": "contextual_update", "text": got[0]["text"], "context_id": task_id}]
    assert task_id in got[0]["text"]

    async def delivered() -> bool:
        return (await stack.task(task_id)).get("delivery") == "delivered"

    await eventually(delivered)
    task = await stack.task(task_id)
    assert task["deliveredVia"] == "websocket"
    assert await stack.redis.exists(pending_key(conversation_id)) == 0

    # Re-registering replays nothing (nothing pending) and never opens the conversation URL.
    response = await stack.register(conversation_id, eleven_id)
    assert response.json()["pendingResults"] == 0
    await stack.deliveries_settled()
    assert len(updates(stack, eleven_id)) == 1
    assert stack.elevenlabs.conversation_opens == 1  # only the socket this test opened
    await voice.close()


async def test_push_failure_keeps_result_pending_then_replays_once(stack: Stack) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    stack.elevenlabs.push_mode = "reject"
    failed_before = await deliveries(stack, "websocket", "failed")
    task_id = await stack.start_task(eleven_id)
    await stack.runner.wait_callbacks(1)
    assert stack.runner.callbacks[0][0] == 200
    await wait_deliveries(stack, "websocket", "failed", failed_before + 1)

    assert updates(stack, eleven_id) == []
    assert await pending_ids(stack, conversation_id) == {task_id}
    task = await stack.task(task_id)
    assert task["status"] == "completed" and task["delivery"] == "pending"

    stack.elevenlabs.push_mode = "accept"
    response = await stack.register(conversation_id, eleven_id)
    assert response.status_code == 200 and response.json()["pendingResults"] == 1
    got = await stack.elevenlabs.wait_update(eleven_id)
    assert [u["context_id"] for u in got] == [task_id]

    async def delivered() -> bool:
        return (await stack.task(task_id)).get("delivery") == "delivered"

    await eventually(delivered)
    assert (await stack.task(task_id))["deliveredVia"] == "websocket"
    assert await pending_ids(stack, conversation_id) == set()

    # Exactly once: another registration has nothing left to replay.
    response = await stack.register(conversation_id, eleven_id)
    assert response.json()["pendingResults"] == 0
    await stack.deliveries_settled()
    assert len(updates(stack, eleven_id)) == 1
    assert stack.elevenlabs.conversation_opens == 1
    await voice.close()


async def test_reregistration_without_push_url_switches_to_relay(stack: Stack) -> None:
    """SPEC §5: websocket push only when *the registration* names a push endpoint. A browser that
    re-registers in relay mode (no pushUrl) must not keep getting results pushed to the old bridge."""
    conversation_id, old_eleven_id, old_voice = await stack.live_conversation(push=True)
    new_voice, _, new_eleven_id = await stack.open_voice_session()
    response = await stack.register(conversation_id, new_eleven_id, push=False)
    assert response.status_code == 200

    attempts_before = await delivery_attempts(stack)
    task_id = await stack.start_task(new_eleven_id)
    await stack.runner.wait_callbacks(1)

    async def attempted() -> bool:
        return await delivery_attempts(stack) > attempts_before

    await eventually(attempted)
    assert updates(stack, old_eleven_id) == [], "result pushed to the previous registration's bridge"
    assert updates(stack, new_eleven_id) == []
    assert await pending_ids(stack, conversation_id) == {task_id}
    await old_voice.close()
    await new_voice.close()


# --- expired sessions, TTLs, replay order -----------------------------------------------------------


async def test_expired_session_result_waits_then_new_registration_delivers(stack: Stack) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    manual_callbacks(stack)
    task_id = await stack.start_task(eleven_id)
    await stack.redis.delete(f"elevenlabs:session:{conversation_id}")  # the session expired

    waiting_before = await deliveries(stack, "none", "waiting")
    await finish_task(stack, task_id)
    await wait_deliveries(stack, "none", "waiting", waiting_before + 1)
    assert updates(stack, eleven_id) == []
    assert await pending_ids(stack, conversation_id) == {task_id}
    assert (await stack.task(task_id))["delivery"] == "pending"
    # The session was not resurrected by the callback.
    assert await stack.redis.exists(f"elevenlabs:session:{conversation_id}") == 0
    # The result is in the conversation history.
    conversation = (await stack.http.get(f"/agent-conversations/api/{conversation_id}")).json()
    tool = [m for m in conversation["messages"] if m["role"] == "tool"]
    assert len(tool) == 1 and tool[0]["status"] == "completed"

    # The user reconnects: a new ElevenLabs conversation registers with its push bridge.
    new_voice, _, new_eleven_id = await stack.open_voice_session()
    response = await stack.register(conversation_id, new_eleven_id)
    assert response.status_code == 200 and response.json()["pendingResults"] == 1
    got = await stack.elevenlabs.wait_update(new_eleven_id)
    assert [u["context_id"] for u in got] == [task_id]

    async def delivered() -> bool:
        return (await stack.task(task_id)).get("delivery") == "delivered"

    await eventually(delivered)
    await stack.deliveries_settled()  # marked delivered first, then dropped from pending
    assert await pending_ids(stack, conversation_id) == set()
    assert updates(stack, eleven_id) == []
    assert stack.elevenlabs.conversation_opens == 2  # the two sockets this test opened
    await voice.close()
    await new_voice.close()


async def test_session_ttl_refreshed_and_webhook_fields_survive_reregistration(stack: Stack) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation(push=False)
    session_key = f"elevenlabs:session:{conversation_id}"
    assert 590 <= await stack.redis.ttl(session_key) <= 600

    manual_callbacks(stack)
    task_id = await stack.start_task(eleven_id)
    session = await stack.redis.hgetall(session_key)
    assert session["lastTaskId"] == task_id
    assert session["lastToolCallAt"].endswith("Z")

    await stack.redis.expire(session_key, 100)
    response = await stack.register(conversation_id, eleven_id, push=False)
    assert response.status_code == 200
    assert 590 <= await stack.redis.ttl(session_key) <= 600
    session = await stack.redis.hgetall(session_key)
    assert session["lastTaskId"] == task_id  # the registration did not erase the webhook's fields
    assert session["lastToolCallAt"].endswith("Z")
    await voice.close()


async def test_several_pending_results_replayed_oldest_first(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    manual_callbacks(stack)
    # No session and no alias yet: the webhook names our conversation id directly.
    t1, t2, t3 = [await stack.start_task(conversation_id, f"task {n}") for n in (1, 2, 3)]
    order = [t2, t3, t1]  # results arrive in a different order than the tasks started
    for task_id in order:
        await finish_task(stack, task_id)
    assert await pending_ids(stack, conversation_id) == set(order)

    async with subscribe(stack, conversation_id) as sse:
        assert [e.task_id for e in await sse.events(3)] == order
        await sse.expect_quiet(keepalives=1)

    voice, _, eleven_id = await stack.open_voice_session()
    response = await stack.register(conversation_id, eleven_id)
    assert response.json()["pendingResults"] == 3
    got = await stack.elevenlabs.wait_update(eleven_id, count=3)
    assert [u["context_id"] for u in got] == order

    async def drained() -> bool:
        return await pending_ids(stack, conversation_id) == set()

    await eventually(drained)
    for task_id in order:
        task = await stack.task(task_id)
        assert task["delivery"] == "delivered" and task["deliveredVia"] == "websocket"
    await stack.deliveries_settled()
    assert len(updates(stack, eleven_id)) == 3
    await voice.close()


async def test_results_arriving_together_are_each_pushed_once(stack: Stack) -> None:
    """Results of one conversation recorded in the same event-loop turn share one push batch
    (DeliveryService.deliver_to): each is still pushed once and confirmed."""
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    manual_callbacks(stack)
    tasks = [await stack.start_task(eleven_id, f"task {n}") for n in range(4)]
    await asyncio.gather(*(finish_task(stack, task_id) for task_id in tasks))
    got = await stack.elevenlabs.wait_update(eleven_id, count=len(tasks))
    assert sorted(u["context_id"] for u in got) == sorted(tasks)

    async def drained() -> bool:
        return await pending_ids(stack, conversation_id) == set()

    await eventually(drained)
    await stack.deliveries_settled()
    assert len(updates(stack, eleven_id)) == len(tasks)
    for task_id in tasks:
        task = await stack.task(task_id)
        assert task["delivery"] == "delivered" and task["deliveredVia"] == "websocket"
    await voice.close()
