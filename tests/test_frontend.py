"""What the existing web front end (jarek-va-ui) reads, SPEC §3.1: the list's `pagination` and sort
orders, `/config/health`'s string dependencies, and live conversation updates over a WebSocket.

Real sockets: the service on loopback (conftest's stack), the suite's redis-server, a real WebSocket
client (`websockets`). The same flows across two `serve` processes, drain and 1,000 idle sockets are
in tests/test_live_multi.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from elevenlabs_agent.redis.server import RedisServer, free_port
from elevenlabs_agent.services import live
from elevenlabs_agent.sim.cursor_runner import split_secret
from elevenlabs_agent.stores import conversations as conversation_store
from tests.conftest import AGENT_ID, Stack, StackFactory, eventually
from tests.helpers import (
    BROWSER_IDENTITY,
    FRAME_TIMEOUT,
    assert_conversation_shape,
    assert_json_error,
    connect_ws,
    next_frame,
)

API = "/agent-conversations/api"


def ws_url(stack: Stack, conversation_id: str) -> str:
    return f"{stack.service.ws_url}{API}/ws?conversationId={conversation_id}"


async def frame_where(ws: Any, check: Any, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    """The first frame `check` accepts (earlier ones, e.g. an update for a previous step, are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await next_frame(ws, timeout, skip_resync=False)
            if check(frame):
                return frame


# --- list: pagination and sort orders ------------------------------------------------------------


async def seed(stack: Stack) -> list[str]:
    """Three conversations: created c0, c1, c2 in that order; c0 accessed last; c1 has most messages."""
    ids = []
    for n in range(3):
        ids.append(await stack.create_conversation(conversationId=f"c{n}"))
        await asyncio.sleep(0.01)  # distinct creation times (ms)
    message = {"role": "user", "content": "hi", "source": "text"}
    for conversation_id, count in (("c1", 3), ("c2", 1), ("c0", 2)):
        for _ in range(count):
            assert (await stack.http.post(f"{API}/{conversation_id}/message", json=message)).status_code == 201
            await asyncio.sleep(0.01)
    return ids


async def listed(stack: Stack, **params: Any) -> dict[str, Any]:
    response = await stack.http.get(f"{API}/list", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def order(body: dict[str, Any]) -> list[str]:
    return [c["conversationId"] for c in body["conversations"]]


async def test_list_has_pagination_object_and_keeps_top_level_fields(stack: Stack) -> None:
    await seed(stack)
    body = await listed(stack, limit=2, offset=0)
    assert body["pagination"] == {"total": 3, "limit": 2, "offset": 0, "hasMore": True}
    assert (body["total"], body["limit"], body["offset"]) == (3, 2, 0)
    for conversation in body["conversations"]:
        assert_conversation_shape(conversation)
    last = await listed(stack, limit=2, offset=2)
    assert last["pagination"] == {"total": 3, "limit": 2, "offset": 2, "hasMore": False}
    assert len(last["conversations"]) == 1
    empty = await listed(stack, offset=10)
    assert empty["pagination"] == {"total": 3, "limit": 20, "offset": 10, "hasMore": False}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["c2", "c1", "c0"]),
        ({"sortBy": "createdAt", "sortOrder": "desc"}, ["c2", "c1", "c0"]),
        ({"sortBy": "createdAt", "sortOrder": "asc"}, ["c0", "c1", "c2"]),
        ({"sortBy": "lastAccessedAt", "sortOrder": "desc"}, ["c0", "c2", "c1"]),
        ({"sortBy": "lastAccessedAt", "sortOrder": "asc"}, ["c1", "c2", "c0"]),
        ({"sortBy": "messageCount", "sortOrder": "desc"}, ["c1", "c0", "c2"]),
        ({"sortBy": "messageCount", "sortOrder": "asc"}, ["c2", "c0", "c1"]),
        ({"sortBy": "messageCount"}, ["c1", "c0", "c2"]),
        ({"sortOrder": "asc"}, ["c0", "c1", "c2"]),
    ],
)
async def test_list_honours_every_sort_key_and_order(stack: Stack, params: dict[str, str], expected: list[str]) -> None:
    await seed(stack)
    assert order(await listed(stack, **params)) == expected
    # Paging walks the same order.
    pages = [order(await listed(stack, limit=1, offset=n, **params)) for n in range(3)]
    assert [p[0] for p in pages] == expected


async def test_sort_orders_follow_tool_results_written_by_the_service(stack: Stack) -> None:
    """A tool webhook appends the pending tool message and the callback replaces it: the count is
    one message, and the conversation becomes the most recently accessed."""
    await seed(stack)
    started = await stack.call_tool({"conversation_id": "c2", "prompt": "ls"})
    assert started.status_code == 200, started.text
    await stack.runner.wait_callbacks(1)
    by_access = order(await listed(stack, sortBy="lastAccessedAt"))
    assert by_access[0] == "c2"
    counts = {c["conversationId"]: len(c["messages"]) for c in (await listed(stack))["conversations"]}
    assert counts == {"c0": 2, "c1": 3, "c2": 2}
    assert order(await listed(stack, sortBy="messageCount", sortOrder="asc"))[0] in {"c0", "c2"}
    scores = dict(await stack.redis.zrange(conversation_store.COUNT_INDEX_KEY, 0, -1, withscores=True))
    assert scores == {"c0": 2.0, "c1": 3.0, "c2": 2.0}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"sortBy": "title"}, "createdAt, lastAccessedAt, messageCount"),
        ({"sortBy": "CREATEDAT"}, "createdAt, lastAccessedAt, messageCount"),
        ({"sortOrder": "up"}, "asc, desc"),
        ({"sortBy": "createdAt", "sortOrder": "DESC"}, "asc, desc"),
    ],
)
async def test_unknown_sort_values_are_400_naming_the_allowed_ones(
    stack: Stack, params: dict[str, str], named: str
) -> None:
    body = assert_json_error(await stack.http.get(f"{API}/list", params=params), 400)
    assert named in body["error"], body


async def test_conversations_stored_before_the_indexes_are_backfilled_at_startup(
    make_stack: StackFactory, redis: aioredis.Redis
) -> None:
    """Data written by the previous version: the hash and the createdAt index only. Housekeeping's
    first pass (at startup) adds them to the new indexes, so every order lists them."""
    for n, (created, accessed, seq) in enumerate(
        [("2026-01-01T00:00:00.000Z", "2026-01-05T00:00:00.000Z", 1), ("2026-01-02T00:00:00.000Z", None, 4)]
    ):
        conversation_id = f"old{n}"
        fields = {"conversationId": conversation_id, "createdAt": created, "metadata": "{}", "seq": seq}
        if accessed:
            fields["lastAccessedAt"] = accessed
        for i in range(1, seq + 1):
            fields[f"msg:{i:06d}"] = orjson.dumps({"role": "user", "content": "x", "source": "text"}).decode()
        await redis.hset(conversation_store.key(conversation_id), mapping=fields)
        await redis.zadd(conversation_store.INDEX_KEY, {conversation_id: 1767225600000 + n * 86_400_000})
    stack = await make_stack(housekeeping_interval_seconds=3600)

    async def backfilled() -> bool:
        return (await listed(stack, sortBy="messageCount"))["pagination"]["total"] == 2

    await eventually(backfilled)
    assert order(await listed(stack, sortBy="messageCount")) == ["old1", "old0"]
    # old0 was accessed on Jan 5, old1 (no lastAccessedAt: its creation counts) on Jan 2.
    assert order(await listed(stack, sortBy="lastAccessedAt")) == ["old0", "old1"]
    assert order(await listed(stack, sortBy="createdAt", sortOrder="asc")) == ["old0", "old1"]


async def test_openapi_documents_pagination_sorting_health_strings_and_the_websocket(stack: Stack) -> None:
    document = (await stack.http.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert set(schemas["ConversationList"]["properties"]["pagination"]["required"]) == {
        "total",
        "limit",
        "offset",
        "hasMore",
    }
    parameters = {p["name"]: p for p in document["paths"][f"{API}/list"]["get"]["parameters"]}
    assert set(parameters["sortBy"]["schema"]["enum"]) == {"", "createdAt", "lastAccessedAt", "messageCount"}
    assert set(parameters["sortOrder"]["schema"]["enum"]) == {"", "asc", "desc"}
    dependencies = schemas["ConfigHealth"]["properties"]["dependencies"]["properties"]
    assert dependencies["redis"] == {"enum": ["connected", "disconnected"]}
    assert dependencies["cursorRunner"]["enum"] == ["connected", "unhealthy", "disconnected"]
    ws = document["paths"][f"{API}/ws"]["get"]
    assert {"101", "426"} <= set(ws["responses"])


# --- /config/health --------------------------------------------------------------------------------


async def test_config_health_dependencies_are_strings_for_every_cursor_runner_state(make_stack: StackFactory) -> None:
    stack = await make_stack()
    body = (await stack.http.get("/config/health")).json()
    assert body["dependencies"] == {"redis": "connected", "cursorRunner": "connected"}
    assert body["status"] == "ok"

    stack.runner.health_status = 503
    body = (await stack.http.get("/config/health")).json()
    assert body["dependencies"] == {"redis": "connected", "cursorRunner": "unhealthy"}
    assert body["checks"]["cursorRunner"] == {"status": "unhealthy", "detail": "HTTP 503"}
    assert body["status"] == "degraded"

    down = await make_stack(cursor_runner_url=f"http://127.0.0.1:{free_port()}")
    body = (await down.http.get("/config/health")).json()
    assert body["dependencies"] == {"redis": "connected", "cursorRunner": "disconnected"}
    assert all(isinstance(v, str) for v in body["dependencies"].values())


async def test_config_health_says_redis_disconnected_when_redis_is_down(
    make_stack: StackFactory, redis_server: RedisServer
) -> None:
    stack = await make_stack(redis_timeout_seconds=0.5)
    redis_server.stop()
    body = (await stack.http.get("/config/health")).json()
    assert body["dependencies"]["redis"] == "disconnected"
    assert body["checks"]["redis"]["status"] == "disconnected"
    assert body["status"] == "degraded"


# --- live updates over WebSocket -------------------------------------------------------------------


@pytest.fixture
async def live_stack(make_stack: StackFactory) -> AsyncIterator[Stack]:
    yield await make_stack(cors_allow_origins=("https://ui.example.com",))


async def test_websocket_snapshot_then_an_update_for_every_kind_of_change(live_stack: Stack) -> None:
    stack = live_stack
    stack.runner.callback_kind = "none"
    conversation_id = await stack.create_conversation(agentId=AGENT_ID)
    # The registry is the process's: other tests' sockets count too, so compare with before.
    accepted = 'elevenlabs_agent_websocket_connections_total{outcome="accepted"}'
    snapshots = 'elevenlabs_agent_websocket_frames_total{type="agent_conversation.snapshot"}'
    before = await metric_values(stack, accepted, snapshots)
    async with connect_ws(ws_url(stack, conversation_id), origin="https://ui.example.com") as ws:
        snapshot = await next_frame(ws)
        assert snapshot["type"] == "agent_conversation.snapshot"
        assert snapshot["conversationId"] == conversation_id
        got = (await stack.http.get(f"{API}/{conversation_id}")).json()["conversation"]
        assert snapshot["conversation"] == got
        assert_conversation_shape(snapshot["conversation"])

        # 1. a client message
        message = {"role": "user", "content": "hello", "source": "text"}
        assert (await stack.http.post(f"{API}/{conversation_id}/message", json=message)).status_code == 201
        update = await frame_where(ws, lambda f: f.get("reason") == "message")
        assert update["type"] == "agent_conversation.updated" and update["conversationId"] == conversation_id
        assert update["conversation"]["messages"][-1]["content"] == "hello"

        # 2. a pending tool call (the webhook names our conversation id)
        eleven_id = "conv_eleven_ws"
        registered = await stack.register(conversation_id, eleven_id, push=False)
        assert registered.status_code == 200, registered.text
        started = await stack.call_tool({"conversation_id": eleven_id, "prompt": "run the tests"})
        task_id = started.json()["taskId"]
        update = await frame_where(ws, lambda f: f.get("reason") == "tool_call")
        tool = update["conversation"]["messages"][-1]
        assert tool["status"] == "pending" and tool["taskId"] == task_id

        # 3. the tool result (cursor-runner's callback)
        sent = next(r for r in stack.runner.received if r["id"] == task_id)
        url, secret = split_secret(sent["callbackUrl"])
        assert secret is not None
        done = await stack.http.post(
            url.removeprefix(stack.service.url),
            json={"success": True, "requestId": task_id, "exitCode": 0, "output": "42 passed"},
            headers={"X-Webhook-Secret": secret},
        )
        assert done.status_code == 200, done.text
        update = await frame_where(ws, lambda f: f.get("reason") == "tool_result")
        result = update["conversation"]["messages"][-1]
        assert result["status"] == "completed" and result["taskId"] == task_id
        assert len(update["conversation"]["messages"]) == 2  # the result replaced the pending message

        # 4. the delivery status (the relay browser acknowledged the result)
        ack = await stack.http.post(f"{API}/{conversation_id}/events/ack", json={"taskIds": [task_id]})
        assert ack.json()["acknowledged"] == [task_id]
        update = await frame_where(ws, lambda f: f.get("reason") == "delivered")
        assert update["conversation"]["conversationId"] == conversation_id

        # An application-level keep-alive the page may send is answered, and changes nothing.
        await ws.send('{"type":"ping"}')
        assert await next_frame(ws) == {"type": "pong"}

    after = await metric_values(stack, accepted, snapshots)
    assert [a - b for a, b in zip(after, before, strict=True)] == [1.0, 1.0]


async def metric_values(stack: Stack, *samples: str) -> list[float]:
    """The current values of these samples (`name{labels}`) in /metrics; 0 for one not there yet."""
    lines = (await stack.http.get("/metrics")).text.splitlines()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}
    return [values.get(sample, 0.0) for sample in samples]


async def test_websocket_changes_to_other_conversations_are_not_sent(live_stack: Stack) -> None:
    stack = live_stack
    mine = await stack.create_conversation()
    other = await stack.create_conversation()
    async with connect_ws(ws_url(stack, mine)) as ws:
        assert (await next_frame(ws))["type"] == "agent_conversation.snapshot"
        message = {"role": "user", "content": "elsewhere", "source": "text"}
        await stack.http.post(f"{API}/{other}/message", json=message)
        await stack.http.post(f"{API}/{mine}/message", json={**message, "content": "here"})
        update = await next_frame(ws)
        assert update["conversationId"] == mine
        assert update["conversation"]["messages"][-1]["content"] == "here"


async def test_websocket_unknown_conversation_gets_an_error_frame_and_a_close(live_stack: Stack) -> None:
    async with connect_ws(ws_url(live_stack, "no-such-conversation")) as ws:
        frame = await next_frame(ws)
        assert frame == {"type": "error", "error": "conversation not found", "conversationId": "no-such-conversation"}
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?conversationId=",
        "?conversationId=a%2Ab",
        "?conversationId=" + "x" * 200,
        "?conversationId=a&conversationId=b",
    ],
)
async def test_websocket_malformed_id_gets_an_error_frame(live_stack: Stack, query: str) -> None:
    async with connect_ws(f"{live_stack.service.ws_url}{API}/ws{query}") as ws:
        frame = await next_frame(ws)
        assert frame["type"] == "error" and "conversationId" in frame["error"]
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_websocket_origin_rules_match_cors(live_stack: Stack) -> None:
    stack = live_stack
    conversation_id = await stack.create_conversation()
    with pytest.raises(InvalidStatus) as refused:
        await connect_ws(ws_url(stack, conversation_id), origin="https://evil.example.com")
    assert refused.value.response.status_code == 403
    # The page's own origin (same host as the request) and non-browser clients (no Origin) are allowed.
    same = f"http://127.0.0.1:{stack.service.port}"
    for origin in ("https://ui.example.com", same, None):
        async with connect_ws(ws_url(stack, conversation_id), origin=origin) as ws:  # type: ignore[arg-type]
            assert (await next_frame(ws))["type"] == "agent_conversation.snapshot"
    metrics = (await stack.http.get("/metrics")).text
    assert 'elevenlabs_agent_websocket_connections_total{outcome="origin_rejected"} 1.0' in metrics


async def test_websocket_refused_when_the_feature_flag_is_off(make_stack: StackFactory) -> None:
    stack = await make_stack(elevenlabs_agent_enabled=False)
    with pytest.raises(InvalidStatus) as refused:
        await connect_ws(ws_url(stack, "c1"))
    assert refused.value.response.status_code == 403


async def test_websocket_route_as_plain_http_is_426(live_stack: Stack) -> None:
    body = assert_json_error(await live_stack.http.get(f"{API}/ws", params={"conversationId": "c1"}), 426)
    assert "WebSocket" in body["error"]
    assert_json_error(await live_stack.http.post(f"{API}/new", json={"conversationId": "ws"}), 400)


async def test_a_repeated_query_parameter_is_400_naming_it_on_every_route_that_reads_one(live_stack: Stack) -> None:
    """None of the API's query parameters is a list: `?x=a&x=b` must not quietly mean a or b (the fuzz
    test found `GET …/ws?conversationId=<valid>&conversationId=<anything>` answered as valid)."""
    stack = live_stack
    conversation_id = await stack.create_conversation()
    for path, query in [
        (f"{API}/ws", "conversationId=c1&conversationId=c2"),
        (f"{API}/list", "limit=5&limit=6"),
        (f"{API}/list", "sortBy=createdAt&sortBy=messageCount"),
        ("/signed-url", "agentId=a1&agentId=a2"),
        (f"{API}/{conversation_id}/events", "lastEventId=1-0&lastEventId=2-0"),
    ]:
        name = query.split("=")[0]
        body = assert_json_error(await stack.http.get(f"{path}?{query}"), 400)
        assert body["error"] == f"{name} must be given once", (path, body)
    # A parameter given once is unaffected; another parameter may sit beside it.
    listed = await stack.http.get(f"{API}/list?limit=5&offset=0")
    assert listed.status_code == 200, listed.text


async def test_websocket_subscribers_gauge_counts_open_sockets(live_stack: Stack) -> None:
    stack = live_stack
    conversation_id = await stack.create_conversation()

    async def gauge() -> float:
        text = (await stack.http.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("elevenlabs_agent_websocket_subscribers "))
        return float(line.split()[1])

    sockets = [await connect_ws(ws_url(stack, conversation_id)) for _ in range(3)]
    for ws in sockets:
        await next_frame(ws)
    assert await gauge() == 3
    for ws in sockets:
        await ws.close()

    async def closed() -> bool:
        return await gauge() == 0

    await eventually(closed)


@pytest.mark.slow
async def test_websocket_resyncs_after_redis_restarts(make_stack: StackFactory, redis_server: RedisServer) -> None:
    """Pub/Sub loses what is published while the subscription is down: once it is back, every socket
    gets the conversation again (reason `resync`)."""
    stack = await make_stack()
    conversation_id = await stack.create_conversation()
    async with connect_ws(ws_url(stack, conversation_id)) as ws:
        assert (await next_frame(ws))["type"] == "agent_conversation.snapshot"
        redis_server.stop()
        redis_server.start()
        frame = await frame_where(ws, lambda f: f.get("reason") == "resync", timeout=30)
        assert frame["conversation"]["conversationId"] == conversation_id
        # And live updates flow again afterwards.
        message = {"role": "user", "content": "after restart", "source": "text"}
        async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=stack.service.url, timeout=10) as http:

            async def appended() -> bool:
                return (await http.post(f"{API}/{conversation_id}/message", json=message)).status_code == 201

            await eventually(appended)
        update = await frame_where(ws, lambda f: f.get("reason") == "message")
        assert update["conversation"]["messages"][-1]["content"] == "after restart"


async def test_a_slow_socket_keeps_the_newest_frames_and_its_close() -> None:
    """A client that does not read loses older update frames (each carries the whole conversation),
    never the newest one, and never the close that a drain queued."""
    subscriber = live.Subscriber("c1")
    for n in range(live.QUEUE_FRAMES + 3):
        subscriber.offer(f"frame {n}")
    assert subscriber.frames == [f"frame {n}" for n in range(3, live.QUEUE_FRAMES + 3)]
    assert subscriber.ready().done()
    subscriber.closing = True
    subscriber.offer(None)
    for n in range(live.QUEUE_FRAMES * 2):
        subscriber.offer(f"late {n}")
    assert subscriber.frames[-1] is None and not any(f and f.startswith("late") for f in subscriber.frames)
