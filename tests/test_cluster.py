"""Redis Cluster and Redis Sentinel (issue 5): the real service over HTTP and the ops CLI as a
subprocess, against a local 3-master cluster (`redis+cluster://`) and behind a Sentinel
(`redis+sentinel://`). The cluster is started once per session, only when a test here needs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from elevenlabs_agent import housekeeping
from elevenlabs_agent.redis.clients import ClusterUnavailable, open_redis
from elevenlabs_agent.redis.server import RedisClusterServers
from elevenlabs_agent.redis.urls import parse_redis_url
from elevenlabs_agent.sim.cursor_runner import callback_body, split_secret
from tests.conftest import SentinelSetup, Stack, StackFactory, eventually
from tests.helpers import connect_ws, nodes_holding, ok_json, run_cli, subscribe

pytestmark = pytest.mark.slow

TASK_TTL = 86_400
SESSION_TTL = 600


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
async def cluster_stack(
    make_stack: StackFactory, cluster_redis: aioredis.Redis, redis_cluster: RedisClusterServers
) -> Stack:
    """The real service on the cluster; `stack.redis` is a cluster client."""
    stack = await make_stack(redis_url=redis_cluster.url, housekeeping_interval_seconds=0.3)
    stack.redis = cluster_redis
    return stack


@pytest.fixture
async def sentinel_redis(redis_sentinel: SentinelSetup) -> AsyncIterator[aioredis.Redis]:
    client = open_redis(redis_sentinel.url, decode_responses=True, socket_connect_timeout=5, socket_timeout=10)
    await client.flushall()
    yield client
    await client.aclose()


# --- URL forms ------------------------------------------------------------------------------------


def test_redis_url_forms() -> None:
    assert parse_redis_url("redis://127.0.0.1:6379/0").kind == "single"
    assert parse_redis_url("unix:///run/redis.sock").kind == "single"

    cluster = parse_redis_url("redis+cluster://10.0.0.1:7000,10.0.0.2")
    assert cluster.kind == "cluster" and not cluster.tls
    assert cluster.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 6379))
    tls = parse_redis_url("rediss+cluster://app:p%40ss@[::1]:7000/0")
    assert tls.tls and tls.hosts == (("::1", 7000),) and (tls.username, tls.password) == ("app", "p@ss")

    sentinel = parse_redis_url("redis+sentinel://:secret@s1,s2:26380/mymaster/2?sentinel_password=sp")
    assert sentinel.kind == "sentinel"
    assert sentinel.hosts == (("s1", 26379), ("s2", 26380))
    assert (sentinel.service_name, sentinel.db) == ("mymaster", 2)
    assert (sentinel.username, sentinel.password, sentinel.sentinel_password) == (None, "secret", "sp")

    for bad in (
        "redis+cluster://",
        "redis+cluster://h:7000/3",
        "redis+cluster://h:99999",
        "redis+cluster://h:7000?db=1",
        "redis+sentinel://h:26379",
        "redis+sentinel://h:26379/mymaster/x",
    ):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


# --- the service on a cluster ---------------------------------------------------------------------


async def test_flow_on_cluster_push_relay_status_and_conversations(cluster_stack: Stack) -> None:
    stack = cluster_stack
    # Push: tool call -> task -> cursor-runner callback -> stored -> pushed to the bridge -> confirmed.
    push_conversation, push_eleven, push_voice = await stack.live_conversation(push=True)
    reply = (
        await stack.call_tool({"tool_name": "code_task", "conversation_id": push_eleven, "prompt": "Fix it"})
    ).json()
    assert reply["success"] is True and reply["status"] == "started", reply
    push_task = reply["taskId"]
    updates = await stack.elevenlabs.wait_update(push_eleven)
    assert [u["context_id"] for u in updates] == [push_task]
    assert stack.runner.callbacks[0][0] == 200

    async def push_delivered() -> bool:
        return (await stack.task(push_task)).get("delivery") == "delivered"

    await eventually(push_delivered)
    task = await stack.task(push_task)
    assert task["status"] == "completed" and task["deliveredVia"] == "websocket" and task["recordedAt"], task

    # Relay: an SSE subscriber gets the result live, acknowledges it, and it is delivered.
    relay_conversation, relay_eleven, relay_voice = await stack.live_conversation(push=False)
    async with subscribe(stack, relay_conversation) as sse:
        await sse.wait_keepalive()  # waiting in a blocking XREAD on the stream's cluster node
        relay_task = (await stack.call_tool({"conversation_id": relay_eleven, "prompt": "Add tests"})).json()["taskId"]
        event = await sse.next_event()
    assert event.event == "task_update" and event.data["taskId"] == relay_task and event.data["status"] == "completed"
    # Resuming after an older id replays from the stream (XRANGE); a fresh subscriber gets the pending snapshot.
    async with subscribe(stack, relay_conversation, last_event_id="0-1") as sse:
        assert (await sse.next_event()).id == event.id
    async with subscribe(stack, relay_conversation) as sse:
        assert (await sse.next_event()).data["taskId"] == relay_task
    ack = await stack.http.post(
        f"/agent-conversations/api/{relay_conversation}/events/ack", json={"taskIds": [relay_task]}
    )
    assert ack.json() == {"success": True, "acknowledged": [relay_task]}, ack.text
    task = await stack.task(relay_task)
    assert task["delivery"] == "delivered" and task["deliveredVia"] == "relay", task
    assert await stack.redis.exists(f"elevenlabs:pending:{{{relay_conversation}}}") == 0

    # The status tool and the conversations API read the same keys back.
    status = await stack.call_tool(
        {"tool_name": "get_task_status", "conversation_id": relay_eleven, "task_id": relay_task}
    )
    assert status.status_code == 200 and relay_task in status.text, status.text
    message = await stack.http.post(
        f"/agent-conversations/api/{relay_conversation}/message",
        json={"role": "user", "content": "thanks"},
    )
    assert message.status_code in (200, 201), message.text
    conversation = (await stack.http.get(f"/agent-conversations/api/{relay_conversation}")).json()
    tools = [m for m in conversation["messages"] if m["role"] == "tool"]
    assert [(m["taskId"], m["status"]) for m in tools] == [(relay_task, "completed")]
    assert conversation["messages"][-1]["content"] == "thanks"
    listing = (await stack.http.get("/agent-conversations/api/list")).json()
    assert {c["conversationId"] for c in listing["conversations"]} >= {push_conversation, relay_conversation}

    # The keys really are spread over the cluster's masters.
    keys = [
        f"cursor_task:{push_task}",
        f"cursor_task:{relay_task}",
        f"elevenlabs:conversation:{push_conversation}",
        f"elevenlabs:conversation:{relay_conversation}",
        f"elevenlabs:session:{push_conversation}",
        f"elevenlabs:session:{relay_conversation}",
        f"elevenlabs:alias:{push_eleven}",
        f"elevenlabs:alias:{relay_eleven}",
        f"elevenlabs:events:{{{push_conversation}}}",
        f"elevenlabs:events:{{{relay_conversation}}}",
        "elevenlabs:conversations",
    ]
    assert all([await stack.redis.exists(key) for key in keys])
    assert len(nodes_holding(stack.redis, keys)) > 1
    await push_voice.close()
    await relay_voice.close()


async def test_housekeeping_on_cluster_repairs_and_reports(
    cluster_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "RECOVERY_GRACE", 0.0)
    stack = cluster_stack
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    stack.runner.callback_kind = "none"
    task_id = (await stack.call_tool({"conversation_id": eleven_id, "prompt": "refactor"})).json()["taskId"]
    # A callback whose second round trip (conversation + outbox + recordedAt) never happened.
    now = iso(datetime.now(UTC))
    result = {"success": True, "exitCode": 0, "output": "Refactored."}
    await stack.redis.hset(
        f"cursor_task:{task_id}",
        mapping={
            "status": "completed",
            "result": orjson.dumps(result).decode(),
            "summary": "The task finished successfully. Output: Refactored.",
            "completedAt": now,
            "callbackAt": now,
            "updatedAt": now,
            "delivery": "pending",
        },
    )
    updates = await stack.elevenlabs.wait_update(eleven_id, timeout=10)
    assert [u["context_id"] for u in updates] == [task_id]

    async def delivered() -> bool:
        task = await stack.task(task_id)
        return bool(task.get("recordedAt")) and task.get("delivery") == "delivered"

    await eventually(delivered)
    conversation = (await stack.http.get(f"/agent-conversations/api/{conversation_id}")).json()
    assert [m["status"] for m in conversation["messages"] if m["role"] == "tool"] == ["completed"]
    stream = await stack.redis.xrange(f"elevenlabs:events:{{{conversation_id}}}")
    assert [entry["taskId"] for _, entry in stream] == [task_id]

    async def gauges() -> bool:
        text = (await stack.http.get("/metrics")).text
        return "elevenlabs_agent_active_sessions 1.0" in text and "elevenlabs_agent_keyspace_scan_timestamp" in text

    await eventually(gauges)
    assert (await stack.http.get("/ready")).status_code == 200
    await voice.close()


async def test_callback_on_cluster_marks_recorded_only_after_the_result_is_stored(
    make_stack: StackFactory,
    cluster_redis: aioredis.Redis,
    redis_cluster: RedisClusterServers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cluster runs each node's share of a pipeline concurrently: if the conversation's node
    fails, the task's node must not have been told the result is recorded (housekeeping then
    finishes the recording once the node is back, and so does the spool's replay of the callback)."""
    monkeypatch.setattr(housekeeping, "RECOVERY_GRACE", 0.0)
    stack = await make_stack(redis_url=redis_cluster.url, redis_timeout_seconds=0.3, housekeeping_interval_seconds=0.3)
    stack.redis = cluster_redis
    conversation_id, eleven_id, voice = await stack.live_conversation(push=False)
    conversation_node = nodes_holding(cluster_redis, [f"elevenlabs:conversation:{conversation_id}"]).pop()
    stack.runner.callback_kind = "none"
    for _ in range(20):  # a task whose key lives on another master than the conversation
        task_id = (await stack.call_tool({"conversation_id": eleven_id, "prompt": "p"})).json()["taskId"]
        if nodes_holding(cluster_redis, [f"cursor_task:{task_id}"]) != {conversation_node}:
            break
    url, secret = split_secret(stack.runner.received[-1]["callbackUrl"])
    assert secret

    host, port = conversation_node.rsplit(":", 1)
    direct = aioredis.Redis(host=host, port=int(port))
    try:
        await direct.execute_command("CLIENT", "PAUSE", 2500, "WRITE")  # the conversation's master stalls
        response = await stack.http.post(
            url, json=callback_body("completion", task_id), headers={"X-Webhook-Secret": secret}
        )
        # The result is stored on the task's node; its recording failed: spooled and acknowledged.
        assert response.status_code == 200 and response.json()["status"] == "accepted", response.text
        task = await stack.task(task_id)
        assert task["callbackAt"] and "recordedAt" not in task, task
    finally:
        await direct.execute_command("CLIENT", "UNPAUSE")
        await direct.aclose()

    async def repaired() -> bool:
        return bool((await stack.task(task_id)).get("recordedAt"))

    await eventually(repaired)
    pending = await stack.redis.hkeys(f"elevenlabs:pending:{{{conversation_id}}}")
    assert task_id in pending
    await voice.close()


async def test_unreachable_cluster_is_a_503_not_a_crash(make_stack: StackFactory) -> None:
    stack = await make_stack(redis_url="redis+cluster://127.0.0.1:1")
    ready = await stack.http.get("/ready")
    assert ready.status_code == 503
    health = (await stack.http.get("/health")).json()
    assert health["redis"] == "disconnected", health
    response = await stack.call_tool({"conversation_id": "conv1", "prompt": "p"})
    assert response.status_code == 503, response.text
    assert response.json()["message"]  # speakable
    with pytest.raises(ClusterUnavailable):
        await stack.service.app.state.runtime.redis.ping()  # type: ignore[union-attr]


# --- the ops CLI on a cluster ---------------------------------------------------------------------


async def seed(client: aioredis.Redis, *, stuck: int, fresh: int, sessions: int) -> dict[str, dict[str, str]]:
    """`stuck` pending tasks two days old, `fresh` completed ones, `sessions` old sessions and one
    conversation each; returns the stuck tasks by key."""
    old = iso(datetime.now(UTC) - timedelta(days=2))
    new = iso(datetime.now(UTC))
    stuck_tasks = {}
    async with client.pipeline(transaction=False) as pipe:
        for i in range(stuck + fresh):
            pending = i < stuck
            key = f"cursor_task:task-{i:04d}"
            value = {
                "taskId": f"task-{i:04d}",
                "conversationId": f"conv-{i % 7}",
                "toolName": "code_task",
                "status": "pending" if pending else "completed",
                "createdAt": old if pending else new,
                "tokenHash": "h",
            }
            if pending:
                stuck_tasks[key] = value
            pipe.hset(key, mapping=value)
            pipe.expire(key, TASK_TTL)
        for i in range(sessions):
            key = f"elevenlabs:session:conv-{i}"
            pipe.hset(key, mapping={"conversationId": f"conv-{i}", "sessionId": f"s{i}", "registeredAt": old})
            pipe.expire(key, SESSION_TTL)
        for i in range(7):
            pipe.hset(f"elevenlabs:conversation:conv-{i}", mapping={"conversationId": f"conv-{i}", "createdAt": old})
            pipe.zadd("elevenlabs:conversations", {f"conv-{i}": i})
        await pipe.execute()
    return stuck_tasks


async def test_ops_cli_on_cluster_list_purge_backup_restore(
    cluster_redis: aioredis.Redis, redis_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    url = redis_cluster.url
    stuck = await seed(cluster_redis, stuck=150, fresh=40, sessions=12)
    assert len(nodes_holding(cluster_redis, list(stuck))) == 3  # every master holds some

    stats = {f["family"]: f for f in ok_json(run_cli("stats", "--json", redis_url=url))}
    assert stats["tasks"]["count"] == 190 and stats["tasks"]["withoutTtl"] == 0
    assert stats["tasks"]["byStatus"] == {"pending": 150, "completed": 40}
    assert stats["tasks"]["stuckPending"] == 150
    assert stats["sessions"]["count"] == 12 and stats["conversations"]["count"] == 7
    assert stats["conversation_index"]["count"] == 1

    listed = ok_json(
        run_cli(
            "tasks", "list", "--status", "pending", "--older-than", "1h", "--limit", "1000", "--json", redis_url=url
        )
    )
    assert {row["key"] for row in listed} == set(stuck)
    assert len(ok_json(run_cli("sessions", "list", "--json", redis_url=url))) == 12
    assert len(ok_json(run_cli("conversations", "list", "--json", redis_url=url))) == 7

    dry = ok_json(run_cli("tasks", "purge", "--older-than", "1h", "--status", "pending", "--json", redis_url=url))
    assert (dry["dryRun"], dry["scanned"], dry["matched"], dry["deleted"]) == (True, 190, 150, 0)
    assert await cluster_redis.exists(*[k for k in list(stuck)[:1]]) == 1

    backup = tmp_path / "tasks.jsonl"
    purged = ok_json(
        run_cli(
            "tasks",
            "purge",
            "--older-than",
            "1h",
            "--status",
            "pending",
            "--yes",
            "--backup",
            backup,
            "--json",
            redis_url=url,
        )
    )
    assert (purged["matched"], purged["deleted"]) == (150, 150), purged
    lines = [orjson.loads(line) for line in backup.read_text().splitlines()]
    assert {line["key"]: line["value"] for line in lines} == stuck  # backed up whole, before deletion
    assert all(0 < line["ttl_ms"] <= TASK_TTL * 1000 for line in lines)
    async with cluster_redis.pipeline(transaction=False) as pipe:
        for key in stuck:
            pipe.exists(key)
        assert sum(await pipe.execute()) == 0
    assert stats_count(ok_json(run_cli("stats", "--json", redis_url=url)), "tasks") == 40

    sessions_backup = tmp_path / "sessions.jsonl"
    sessions = ok_json(
        run_cli(
            "sessions", "purge", "--older-than", "1h", "--yes", "--backup", sessions_backup, "--json", redis_url=url
        )
    )
    assert sessions["deleted"] == 12 and len(sessions_backup.read_text().splitlines()) == 12

    restored = ok_json(run_cli("restore", backup, "--yes", "--json", redis_url=url))
    assert (restored["read"], restored["restored"], restored["skippedExisting"]) == (150, 150, 0)
    async with cluster_redis.pipeline(transaction=False) as pipe:
        for key in stuck:
            pipe.hgetall(key)
            pipe.ttl(key)
        replies = await pipe.execute()
    assert dict(zip(stuck, replies[0::2], strict=True)) == stuck
    assert all(0 < ttl <= TASK_TTL for ttl in replies[1::2])
    assert await cluster_redis.exists("elevenlabs:lock:purge") == 0


def stats_count(stats: list[dict[str, Any]], family: str) -> int:
    count: int = next(f["count"] for f in stats if f["family"] == family)
    return count


def test_ops_cli_unreachable_cluster_is_one_error_line() -> None:
    result = run_cli("stats", redis_url="redis+cluster://127.0.0.1:1")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().startswith("Error: Redis error:"), result.stderr
    result = run_cli("stats", redis_url="redis+cluster://127.0.0.1:1/5")
    assert result.returncode == 1 and "invalid Redis URL" in result.stderr, result.stderr


# --- Sentinel -------------------------------------------------------------------------------------


async def test_flow_and_ops_cli_through_sentinel(
    make_stack: StackFactory, redis_sentinel: SentinelSetup, sentinel_redis: aioredis.Redis, tmp_path: Path
) -> None:
    stack = await make_stack(redis_url=redis_sentinel.url)
    stack.redis = sentinel_redis
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    task_id = (await stack.call_tool({"conversation_id": eleven_id, "prompt": "Fix the login bug"})).json()["taskId"]
    updates = await stack.elevenlabs.wait_update(eleven_id)
    assert [u["context_id"] for u in updates] == [task_id]

    async def delivered() -> bool:
        return (await stack.task(task_id)).get("delivery") == "delivered"

    await eventually(delivered)
    # The data is on the master the sentinel names.
    assert await redis_sentinel_master_has(redis_sentinel, f"cursor_task:{task_id}")
    conversation = (await stack.http.get(f"/agent-conversations/api/{conversation_id}")).json()
    assert [m["status"] for m in conversation["messages"] if m["role"] == "tool"] == ["completed"]
    # A repeated callback is recognised as a duplicate (the callback's Lua script ran on the master).
    url, secret = split_secret(stack.runner.received[0]["callbackUrl"])
    assert secret
    again = await stack.http.post(url, json=callback_body("completion", task_id), headers={"X-Webhook-Secret": secret})
    assert again.status_code == 200 and again.json()["duplicate"] is True, again.text
    await voice.close()

    await seed(sentinel_redis, stuck=5, fresh=2, sessions=0)
    backup = tmp_path / "tasks.jsonl"
    purged = ok_json(
        run_cli(
            "tasks",
            "purge",
            "--older-than",
            "1h",
            "--status",
            "pending",
            "--yes",
            "--backup",
            backup,
            "--json",
            redis_url=redis_sentinel.url,
        )
    )
    assert (purged["matched"], purged["deleted"]) == (5, 5), purged
    assert len(backup.read_text().splitlines()) == 5
    tasks = next(f for f in ok_json(run_cli("stats", "--json", redis_url=redis_sentinel.url)) if f["family"] == "tasks")
    assert tasks["byStatus"] == {"completed": 3}  # the two fresh ones and the flow's


async def redis_sentinel_master_has(setup: SentinelSetup, key: str) -> bool:
    direct = aioredis.Redis(port=setup.master.port)
    try:
        return bool(await direct.exists(key))
    finally:
        await direct.aclose()


# --- issue 10: listing orders and live updates on Cluster and Sentinel ------------------------------


async def test_sort_orders_and_live_updates_on_cluster(cluster_stack: Stack) -> None:
    """Scripts touch one slot on a cluster: lastAccessedAt is indexed in the same pipeline, message
    counts by housekeeping (every 0.3 s here). Live updates are published from the script (PUBLISH
    is cluster-wide) and reach the instance's one subscription."""
    import asyncio

    stack = cluster_stack
    api = "/agent-conversations/api"
    for n in range(3):
        await stack.create_conversation(conversationId=f"k{n}")
        await asyncio.sleep(0.01)
    url = f"{stack.service.ws_url}{api}/ws?conversationId=k0"
    async with connect_ws(url) as ws:
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "agent_conversation.snapshot"
        message = {"role": "user", "content": "on the cluster", "source": "text"}
        for conversation_id, count in (("k0", 3), ("k2", 1)):
            for _ in range(count):
                assert (await stack.http.post(f"{api}/{conversation_id}/message", json=message)).status_code == 201
        update = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        while update.get("reason") == "resync":  # the subscription came up after this socket
            update = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert update["type"] == "agent_conversation.updated" and update["reason"] == "message"
        assert update["conversation"]["messages"][-1]["content"] == "on the cluster"

    async def listed(**params: str) -> list[str]:
        body = (await stack.http.get(f"{api}/list", params=params)).json()
        assert body["pagination"]["total"] == 3, body
        return [c["conversationId"] for c in body["conversations"]]

    assert await listed(sortBy="lastAccessedAt") == ["k2", "k0", "k1"]
    assert await listed(sortBy="createdAt", sortOrder="asc") == ["k0", "k1", "k2"]

    async def counted() -> bool:
        return await listed(sortBy="messageCount") == ["k0", "k2", "k1"]

    await eventually(counted)


async def test_refused_create_on_cluster_leaves_the_indexes_alone(cluster_redis: aioredis.Redis) -> None:
    """A create that finds the conversation (409) must not touch the lastAccessed index: the
    cluster's index writes follow the create script only when it created."""
    import uuid

    from elevenlabs_agent.stores.conversations import ACCESSED_INDEX_KEY, INDEX_KEY, ConversationStore

    store = ConversationStore(cluster_redis)
    conversation_id = f"refused-{uuid.uuid4().hex}"
    first, later = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    assert await store.create(conversation_id, now=iso(first), agent_id=None, metadata={})
    assert not await store.create(conversation_id, now=iso(later), agent_id=None, metadata={})
    first_ms = first.timestamp() * 1000
    assert await cluster_redis.zscore(ACCESSED_INDEX_KEY, conversation_id) == first_ms
    assert await cluster_redis.zscore(INDEX_KEY, conversation_id) == first_ms


async def test_live_updates_through_sentinel(make_stack: StackFactory, redis_sentinel: SentinelSetup) -> None:
    import asyncio

    stack = await make_stack(redis_url=redis_sentinel.url)
    conversation_id = await stack.create_conversation()
    api = "/agent-conversations/api"
    async with connect_ws(f"{stack.service.ws_url}{api}/ws?conversationId={conversation_id}") as ws:
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "agent_conversation.snapshot"
        message = {"role": "user", "content": "via sentinel", "source": "text"}
        assert (await stack.http.post(f"{api}/{conversation_id}/message", json=message)).status_code == 201
        update = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        while update.get("reason") == "resync":  # the subscription came up after this socket
            update = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert update["conversation"]["messages"][-1]["content"] == "via sentinel"
    # The sentinel's Redis is shared with the other tests here: look for this conversation.
    body = (await stack.http.get(f"{api}/list", params={"sortBy": "messageCount", "limit": 100})).json()
    counts = {c["conversationId"]: len(c["messages"]) for c in body["conversations"]}
    assert counts[conversation_id] == 1, body["pagination"]
