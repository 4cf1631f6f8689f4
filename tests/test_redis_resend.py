"""Resending after a dropped connection is safe: the connection is dropped at the worst moment
(Redis ran the write, its reply is lost), the client resends on a new connection, and the write
still happens once and answers as it should (elevenlabs_agent.redis.mux, stores/conversations.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio import Redis

from elevenlabs_agent.redis.clients import connect_redis
from elevenlabs_agent.redis.mux import MuxRedis
from elevenlabs_agent.redis.server import RedisServer
from elevenlabs_agent.stores.conversations import ConversationStore, key
from elevenlabs_agent.stores.locks import Lease, LockBusy
from tests.conftest import StackFactory
from tests.redis_proxy import RoundTripProxy

API = "/agent-conversations/api"
NOW = "2026-01-02T03:04:05.678Z"
CLIENTS: dict[str, Callable[[str], Redis]] = {
    "mux": lambda url: MuxRedis(url, timeout=2.0),
    "redis-py": lambda url: connect_redis(url, 2.0),
}


@pytest.fixture
async def proxy(redis_server: RedisServer, redis: aioredis.Redis) -> AsyncIterator[RoundTripProxy]:
    p = RoundTripProxy(redis_server.port)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture(params=sorted(CLIENTS))
async def store(request: pytest.FixtureRequest, proxy: RoundTripProxy) -> AsyncIterator[ConversationStore]:
    client = CLIENTS[request.param](proxy.url)
    yield ConversationStore(client)
    await client.aclose()


async def test_a_resent_create_is_not_a_conflict(store: ConversationStore, proxy: RoundTripProxy) -> None:
    proxy.drop_reply_to(b"HSETNX")
    assert await store.create("conv-resent-create", now=NOW, agent_id="agent", metadata={"a": 1})
    assert proxy.dropped == 1
    assert bytes(proxy.commands_bytes).count(b"HSETNX") == 2, "the create was not sent twice"
    # A different create of the same id is still refused.
    assert not await store.create("conv-resent-create", now=NOW, agent_id="other", metadata={"a": 1})
    assert not await store.create(
        "conv-resent-create", now="2026-01-02T03:04:05.679Z", agent_id="agent", metadata={"a": 1}
    )


async def test_a_resent_append_is_stored_once(
    store: ConversationStore, proxy: RoundTripProxy, redis: aioredis.Redis
) -> None:
    assert await store.create("conv-resent-append", now=NOW, agent_id=None, metadata={})
    proxy.reset()
    proxy.drop_reply_to(b"HINCRBY")
    message = {"role": "user", "content": "once", "timestamp": NOW}
    assert await store.append_message("conv-resent-append", message, NOW)
    assert proxy.dropped == 1
    assert bytes(proxy.commands_bytes).count(b"HINCRBY") == 2, "the append was not sent twice"
    conversation = await store.get("conv-resent-append")
    assert conversation is not None
    assert conversation.messages == [message]
    assert await redis.hget(key("conv-resent-append"), "seq") == "1"
    # The same message sent again by the client is a new append, not a resend.
    assert await store.append_message("conv-resent-append", message, NOW)
    conversation = await store.get("conv-resent-append")
    assert conversation is not None and conversation.messages == [message, message]


async def test_a_resent_lease_acquire_finds_the_lease_its_own(store: ConversationStore, proxy: RoundTripProxy) -> None:
    lease = Lease(store.redis, "resend-test")
    proxy.drop_reply_to(lease.token.encode())
    await lease.acquire()
    assert proxy.dropped == 1
    assert bytes(proxy.commands_bytes).count(lease.token.encode()) >= 2, "the SET was not sent twice"
    with pytest.raises(LockBusy):
        await Lease(store.redis, "resend-test").acquire()
    await lease.release()


async def test_appends_remember_a_bounded_number_of_ids(store: ConversationStore, redis: aioredis.Redis) -> None:
    assert await store.create("conv-many-appends", now=NOW, agent_id=None, metadata={})
    for n in range(150):
        assert await store.append_message("conv-many-appends", {"role": "user", "content": str(n)}, NOW)
    remembered = await redis.hget(key("conv-many-appends"), "appends")
    assert remembered is not None and len(remembered) <= 4096
    # Newest first, whole entries only.
    entries = remembered.split()
    assert entries[0].endswith("=msg:000150") and len(entries) >= 40
    assert all(len(entry.split("=")[0]) == 32 and entry.split("=")[1].startswith("msg:") for entry in entries)


async def test_http_create_and_append_survive_a_lost_reply(make_stack: StackFactory, proxy: RoundTripProxy) -> None:
    stack = await make_stack(redis_url=proxy.url)
    proxy.drop_reply_to(b"HSETNX")
    created = await stack.http.post(f"{API}/new", json={"conversationId": "conv-http-resend", "metadata": {"k": "v"}})
    assert created.status_code == 201, created.text
    assert proxy.dropped == 1
    proxy.drop_reply_to(b"HINCRBY")
    sent = await stack.http.post(f"{API}/conv-http-resend/message", json={"role": "user", "content": "hello"})
    assert sent.status_code == 201, sent.text
    assert proxy.dropped == 2
    body = (await stack.http.get(f"{API}/conv-http-resend")).json()
    assert [m["content"] for m in body["messages"]] == ["hello"]
