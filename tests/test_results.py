"""The one-step scripts of one server (stores/results.py, stores/tool_calls.py) write exactly what a
cluster's two steps write: the same tool message, outbox event, Pub/Sub announcement, task and
session fields, byte for byte."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from elevenlabs_agent.redis.mux import MuxRedis
from elevenlabs_agent.redis.server import RedisServer
from elevenlabs_agent.schemas.webhooks import CallbackBody
from elevenlabs_agent.services.callbacks import CallbackService, Outcome
from elevenlabs_agent.services.delivery import DeliveryService
from elevenlabs_agent.stores.aliases import key as alias_key
from elevenlabs_agent.stores.conversations import INDEX_KEYS, UPDATES_CHANNEL, ConversationStore
from elevenlabs_agent.stores.conversations import key as conversation_key
from elevenlabs_agent.stores.outbox import Outbox, pending_key
from elevenlabs_agent.stores.sessions import SessionStore
from elevenlabs_agent.stores.sessions import key as session_key
from elevenlabs_agent.stores.tasks import NewTask, TaskStore, hash_token
from elevenlabs_agent.stores.tasks import key as task_key
from elevenlabs_agent.stores.tool_calls import Recorded as ToolCallRecorded
from elevenlabs_agent.stores.tool_calls import ToolCallRecorder

NOW = "2026-01-02T03:04:05.678Z"
# Members JSON escapes, non-ASCII text and nesting: the script splices the stored toolArgs as they are.
TOOL_ARGS: dict[str, Any] = {"prompt": 'say "hi" / ünïcødé ✓\n', "n": [1, 2.5, None, True], "o": {"k": {}}}
RESULT: dict[str, Any] = {"success": True, "requestId": "", "output": 'done: "ok" / ✓', "exitCode": 0}


async def _seed(tasks: TaskStore, task_id: str, conversation_id: str) -> None:
    batch = tasks.batch()
    tasks.queue_create(
        batch, NewTask(task_id, conversation_id, "code_task", TOOL_ARGS, "p", hash_token("secret-" + task_id), NOW)
    )
    await batch.run()


async def _written(redis: aioredis.Redis, task_id: str, conversation_id: str) -> tuple[str, str, dict[str, str]]:
    field = await redis.hget(conversation_key(conversation_id), "task:" + task_id)
    message = await redis.hget(conversation_key(conversation_id), field)
    event = await redis.hget(pending_key(conversation_id), task_id)
    task = await redis.hgetall(task_key(task_id))
    return message.replace(task_id, "T"), event.replace(task_id, "T").replace(conversation_id, "C"), task


async def test_one_step_writes_what_two_steps_write(redis_server: RedisServer, redis: aioredis.Redis) -> None:
    mux = MuxRedis(f"redis://127.0.0.1:{redis_server.port}/0", timeout=2.0)
    tasks, conversations, outbox = TaskStore(mux), ConversationStore(mux), Outbox(mux, mux)
    delivery = DeliveryService(outbox, SessionStore(mux), tasks, conversations, 1.0, 10.0)
    service = CallbackService(tasks, conversations, outbox, delivery, None)
    assert service.recorder.available
    pubsub = redis.pubsub()
    await pubsub.subscribe(UPDATES_CHANNEL)
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation

    await _seed(tasks, "task-one-step", "conv-one-step")
    body = CallbackBody.parse({**RESULT, "requestId": "task-one-step"})
    answer = await service.handle(body, "secret-task-one-step")
    assert answer == {"success": True, "requestId": "task-one-step", "status": "completed"}

    # The two steps, as on a cluster: the completion, then the recording.
    await _seed(tasks, "task-two-step", "conv-two-step")
    completed_at = await redis.hget(task_key("task-one-step"), "completedAt")
    done = await tasks.complete(
        "task-two-step",
        token_hash=hash_token("secret-task-two-step"),
        shared_secret_ok=False,
        status="completed",
        result={**RESULT, "requestId": "task-two-step"},
        summary=(await redis.hget(task_key("task-one-step"), "summary")) or "",
        now=completed_at,
    )
    assert done.outcome == "accepted"
    task = await tasks.get("task-two-step")
    assert task is not None
    await service.record(Outcome.from_task(task))

    one_message, one_event, one_task = await _written(redis, "task-one-step", "conv-one-step")
    two_message, two_event, two_task = await _written(redis, "task-two-step", "conv-two-step")
    assert one_message == two_message
    assert orjson.loads(one_message)["toolArgs"] == TOOL_ARGS
    assert one_event.split(",", 1)[1] == two_event.split(",", 1)[1]  # after its eventId
    assert set(one_task) == set(two_task) and "recordedAt" in one_task
    announced = []
    while (message := await pubsub.get_message(timeout=1.0)) is not None:
        announced.append(orjson.loads(message["data"]))
    assert {"conversationId": "conv-one-step", "reason": "tool_result"} in announced
    assert {"conversationId": "conv-two-step", "reason": "tool_result"} in announced
    await pubsub.aclose()
    await mux.aclose()


async def test_tool_call_one_step_writes_what_two_steps_write(redis_server: RedisServer, redis: aioredis.Redis) -> None:
    mux = MuxRedis(f"redis://127.0.0.1:{redis_server.port}/0", timeout=2.0)
    tasks, conversations = TaskStore(mux), ConversationStore(mux)
    recorder = ToolCallRecorder(tasks, conversations)
    assert recorder.available
    await redis.set(alias_key("el-one"), "conv-tool-one")
    await redis.hset(session_key("conv-tool-one"), mapping={"conversationId": "conv-tool-one"})
    await redis.hset(session_key("conv-tool-two"), mapping={"conversationId": "conv-tool-two"})

    def message(task_id: str) -> dict[str, Any]:
        return {"role": "tool", "content": "Started.", "timestamp": NOW, "toolArgs": TOOL_ARGS, "taskId": task_id}

    def task(task_id: str, conversation_id: str = "") -> NewTask:
        return NewTask(task_id, conversation_id, "code_task", TOOL_ARGS, "p ✓", "h", NOW)

    one = await recorder.resolve_and_record(
        ["el-unknown", "el-one"], None, task("tool-one"), message=message("tool-one"), reason="tool_call"
    )
    assert one == ToolCallRecorded("conv-tool-one", aliased=True, written="stored")
    # The two steps, as on a cluster (the alias resolved before).
    batch = tasks.batch()
    tasks.queue_create(batch, task("tool-two", "conv-tool-two"))
    conversations.queue_upsert_message(
        batch, "conv-tool-two", message("tool-two"), now=NOW, reason="tool_call", task_id="tool-two", create=True
    )
    SessionStore(mux).queue_note_task(batch, "conv-tool-two", "tool-two", NOW)
    await batch.run()

    def same(h: dict[str, str]) -> dict[str, str]:
        def n(text: str) -> str:
            return text.replace("-one", "-N").replace("-two", "-N")

        return {n(f): n(v) for f, v in h.items()}

    assert same(await redis.hgetall(task_key("tool-one"))) == same(await redis.hgetall(task_key("tool-two")))
    sessions = [await redis.hgetall(session_key(c)) for c in ("conv-tool-one", "conv-tool-two")]
    assert same(sessions[0]) == same(sessions[1]) and sessions[0]["lastTaskId"] == "tool-one"
    stored = [await redis.hgetall(conversation_key(c)) for c in ("conv-tool-one", "conv-tool-two")]
    assert same(stored[0]) == same(stored[1])
    for index in INDEX_KEYS:
        assert await redis.zscore(index, "conv-tool-one") is not None

    # Not aliased: the webhook's own conversation id.
    own = await recorder.resolve_and_record(
        ["el-own"], "el-own", task("tool-own"), message=message("tool-own"), reason="tool_call"
    )
    assert own == ToolCallRecorded("el-own", aliased=False, written="stored")
    assert await redis.hget(task_key("tool-own"), "conversationId") == "el-own"
    # No alias and no conversation id of its own: nothing is written.
    none = await recorder.resolve_and_record(
        ["el-unknown"], None, task("tool-none"), message=message("tool-none"), reason="tool_call"
    )
    assert none == ToolCallRecorded(None)
    assert not await redis.exists(task_key("tool-none"))
    await mux.aclose()
