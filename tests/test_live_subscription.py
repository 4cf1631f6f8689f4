"""services/live.py's one Pub/Sub subscription, on a real Redis: held only while the instance has
WebSocket subscribers (and IDLE_SECONDS after the last one), and what a socket gets across it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from elevenlabs_agent.services import live
from elevenlabs_agent.stores.conversation_updates import ConversationUpdates
from elevenlabs_agent.stores.conversations import UPDATES_CHANNEL, ConversationStore
from elevenlabs_agent.timeutil import now_iso


async def subscriptions(redis: aioredis.Redis) -> int:
    return int(dict(await redis.pubsub_numsub(UPDATES_CHANNEL))[UPDATES_CHANNEL])


async def until_subscriptions(redis: aioredis.Redis, expected: int) -> None:
    async with asyncio.timeout(5):
        while await subscriptions(redis) != expected:
            await asyncio.sleep(0.01)


async def frame_with(subscriber: live.Subscriber, reason: str) -> dict[str, Any]:
    """The first queued frame with `reason` (frames before it are dropped)."""
    async with asyncio.timeout(5):
        while True:
            await subscriber.ready()
            while subscriber.frames:
                text = subscriber.frames.pop(0)
                assert text is not None
                frame: dict[str, Any] = orjson.loads(text)
                if frame.get("reason") == reason:
                    return frame


async def test_the_subscription_is_held_only_while_there_are_sockets(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "IDLE_SECONDS", 0.3)
    store = ConversationStore(redis)
    await store.create("c1", now=now_iso(), agent_id=None, metadata={})
    updates = live.LiveUpdates(store, ConversationUpdates(redis))
    updates.start()
    try:
        await asyncio.sleep(0.1)
        assert not updates.listening and await subscriptions(redis) == 0

        first = updates.subscribe("c1")
        await updates.before_snapshot(first)
        assert await subscriptions(redis) == 1
        await store.announce("c1", "tool_result")
        # The socket read its snapshot under the subscription it started: no resync, the change only.
        assert (await frame_with(first, "tool_result"))["type"] == live.UPDATED
        assert first.frames == []

        updates.unsubscribe(first)
        await asyncio.sleep(0.15)
        # A socket that comes back within IDLE_SECONDS finds the subscription still up.
        second = updates.subscribe("c1")
        await updates.before_snapshot(second)
        await asyncio.sleep(0.25)
        assert await subscriptions(redis) == 1
        await store.announce("c1", "delivered")
        await frame_with(second, "delivered")

        updates.unsubscribe(second)
        await until_subscriptions(redis, 0)
        assert not updates.listening
    finally:
        await updates.stop()


async def test_stop_ends_an_idle_subscription_and_later_sockets_start_none(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "IDLE_SECONDS", 60)
    store = ConversationStore(redis)
    updates = live.LiveUpdates(store, ConversationUpdates(redis))
    updates.start()
    updates.unsubscribe(updates.subscribe("c1"))
    await until_subscriptions(redis, 1)
    await updates.stop()
    await until_subscriptions(redis, 0)
    updates.subscribe("c2")
    assert not updates.listening


async def test_a_re_subscription_resyncs_sockets_that_read_their_snapshot_before_it(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis)
    await store.create("c1", now=now_iso(), agent_id=None, metadata={})
    updates = live.LiveUpdates(store, ConversationUpdates(redis))
    updates.start()
    try:
        old = updates.subscribe("c1")
        await updates.before_snapshot(old)
        await until_subscriptions(redis, 1)
        # The subscription drops (as when Redis restarts); redis-py subscribes again on its own.
        await redis.client_kill_filter(_type="pubsub")
        assert (await frame_with(old, "resync"))["conversation"]["conversationId"] == "c1"
    finally:
        await updates.stop()
