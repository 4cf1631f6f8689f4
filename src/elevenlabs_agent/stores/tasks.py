"""`cursor_task:{taskId}`: a task dispatched to cursor-runner, awaiting (or holding) its result.

Value: a hash, readable with `HGETALL cursor_task:<id>`. Fields: taskId, conversationId, toolName,
toolArgs (JSON), prompt, status (pending|completed|failed), createdAt, updatedAt, error, tokenHash
(SHA-256 of the per-task callback secret; the secret itself is never stored), and once the callback
arrived: callbackAt, completedAt, result (JSON), summary, delivery (pending|delivered), deliveredAt,
deliveredVia, and recordedAt once the result is also in the conversation and its outbox.
Lifetime: TTL 24 h from creation; the result also lives on in the conversation.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import orjson
from redis.asyncio import Redis

from elevenlabs_agent.stores import lua
from elevenlabs_agent.stores.batch import Batch
from elevenlabs_agent.stores.keyspace import SCAN_COUNT, Pace, scan_batches
from elevenlabs_agent.timeutil import age_seconds

KEY_PREFIX = "cursor_task:"
SCAN_PATTERN = KEY_PREFIX + "*"
DEFAULT_TTL = 86_400
HOLDS = "a dispatched task: status, tool, prompt, result, callback token hash"
# cursor-runner works for minutes; a task still pending after an hour has lost its callback. (Tasks
# expire after 24 h, so a 24 h threshold would only ever see keys that lost their TTL.)
STUCK_TASK_AGE = 3_600.0

# The callback is the only writer of callbackAt, which makes it the idempotency marker: whatever
# the dispatch outcome was, the first authenticated callback wins and every later one is a duplicate.
# One HMGET reads all it needs (it was five commands: each call into Redis costs it about 1-2 µs).
COMPLETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local t = redis.call('HMGET', KEYS[1], 'tokenHash', 'callbackAt', 'status', 'conversationId', 'toolName',
  'toolArgs', 'prompt')
if ARGV[2] ~= '1' and t[1] ~= ARGV[1] then return {'unauthorized'} end
if t[2] then return {'duplicate', t[3]} end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'result', ARGV[4], 'summary', ARGV[6],
  'completedAt', ARGV[5], 'callbackAt', ARGV[5], 'updatedAt', ARGV[5], 'delivery', 'pending')
return {'accepted', t[4] or '', t[5] or '', t[6] or '{}', t[7] or ''}
"""

# A dispatch failure must not overwrite a result that a fast callback already stored.
_FAIL_DISPATCH = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'callbackAt') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[1], 'updatedAt', ARGV[2])
return 1
"""

CallbackOutcome = Literal["accepted", "duplicate", "unknown", "unauthorized"]


def key(task_id: str) -> str:
    return KEY_PREFIX + task_id


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# KEYS[1] task; ARGV = conversation id, now, channel. 1 if marked (again), 0 if not this conversation's
# stored result.
_MARK_DELIVERED = """
if redis.call('HGET', KEYS[1], 'conversationId') ~= ARGV[1] then return 0 end
if not redis.call('HGET', KEYS[1], 'delivery') then return 0 end
redis.call('HSET', KEYS[1], 'delivery', 'delivered', 'deliveredAt', ARGV[2], 'deliveredVia', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Task:
    task_id: str
    conversation_id: str
    tool_name: str
    prompt: str
    status: str
    created_at: str
    tool_args: dict[str, Any] = field(default_factory=dict)
    completed_at: str | None = None
    result: dict[str, Any] | None = None
    summary: str | None = None
    error: str | None = None
    delivery: str | None = None
    delivered_at: str | None = None
    callback_at: str | None = None
    recorded_at: str | None = None

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Task:
        return cls(
            task_id=h.get("taskId", ""),
            conversation_id=h.get("conversationId", ""),
            tool_name=h.get("toolName", ""),
            prompt=h.get("prompt", ""),
            status=h.get("status", ""),
            created_at=h.get("createdAt", ""),
            tool_args=orjson.loads(h.get("toolArgs") or "{}"),
            completed_at=h.get("completedAt"),
            result=orjson.loads(h["result"]) if h.get("result") else None,
            summary=h.get("summary"),
            error=h.get("error"),
            delivery=h.get("delivery"),
            delivered_at=h.get("deliveredAt"),
            callback_at=h.get("callbackAt"),
            recorded_at=h.get("recordedAt"),
        )

    def to_public(self) -> dict[str, Any]:
        """The task as shown to clients and operators: everything but the token hash."""
        return {
            "taskId": self.task_id,
            "conversationId": self.conversation_id,
            "toolName": self.tool_name,
            "status": self.status,
            "createdAt": self.created_at,
            "completedAt": self.completed_at,
            "summary": self.summary,
            "error": self.error,
            "result": self.result,
            "delivery": self.delivery,
            "deliveredAt": self.delivered_at,
        }


@dataclass(frozen=True)
class Completion:
    outcome: CallbackOutcome
    conversation_id: str = ""
    tool_name: str = ""
    tool_args: dict[str, Any] = field(default_factory=dict)
    prompt: str = ""
    previous_status: str = ""


def completion_args(
    token_hash: str, shared_secret_ok: bool, status: str, result: dict[str, Any], summary: str, now: str
) -> list[str]:
    """The ARGV of COMPLETE."""
    return [token_hash, "1" if shared_secret_ok else "0", status, orjson.dumps(result).decode(), now, summary]


def completion_of(reply: list[str]) -> Completion:
    """COMPLETE's reply (the first five items of a longer one)."""
    outcome = reply[0]
    if outcome == "accepted":
        return Completion(
            "accepted",
            conversation_id=reply[1],
            tool_name=reply[2],
            tool_args=orjson.loads(reply[3]),
            prompt=reply[4],
        )
    if outcome == "duplicate":
        return Completion("duplicate", previous_status=reply[1])
    return Completion("unknown" if outcome == "unknown" else "unauthorized")


@dataclass
class TaskSummary:
    by_status: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    oldest_pending_seconds: float = 0.0
    stuck_pending: int = 0
    scanned: int = 0
    unrecorded: list[str] = field(default_factory=list)  # callback stored, recording cut short

    def add(self, status: str | None, age: float | None, stuck_age: float) -> None:
        self.by_status[status or "unknown"] = self.by_status.get(status or "unknown", 0) + 1
        if status == "pending":
            self.pending += 1
            if age is not None:
                self.oldest_pending_seconds = max(self.oldest_pending_seconds, age)
                self.stuck_pending += age >= stuck_age


@dataclass(frozen=True)
class NewTask:
    """A pending task as a tool call creates it (`TaskStore.queue_create`, `ToolCallRecorder`)."""

    task_id: str
    conversation_id: str
    tool_name: str
    tool_args: dict[str, Any]
    prompt: str
    token_hash: str
    now: str


class TaskStore:
    def __init__(self, redis: Redis, ttl: int = DEFAULT_TTL) -> None:
        self.redis = redis
        self.ttl = ttl
        self._complete = lua.OneKeyScript(redis, COMPLETE)
        self._fail_dispatch = lua.OneKeyScript(redis, _FAIL_DISPATCH)

    def batch(self) -> Batch:
        return Batch(self.redis)

    def queue_create(self, batch: Batch, task: NewTask) -> None:
        batch.eval(lua.HSET_WITH_TTL, [key(task.task_id)], self.creation_args(task))

    def creation_args(self, task: NewTask) -> list[str | int]:
        """The ARGV of lua.HSET_WITH_TTL that creates a pending task."""
        fields = {
            "taskId": task.task_id,
            "conversationId": task.conversation_id,
            "toolName": task.tool_name,
            "toolArgs": orjson.dumps(task.tool_args).decode(),
            "prompt": task.prompt,
            "status": "pending",
            "createdAt": task.now,
            "updatedAt": task.now,
            "tokenHash": task.token_hash,
        }
        args: list[str | int] = [self.ttl]
        for name, value in fields.items():
            args += [name, value]
        return args

    async def fail_dispatch(self, task_id: str, error: str, now: str) -> bool:
        """Mark a task failed because it could not be dispatched; False if its callback already won."""
        return bool(await self._fail_dispatch(key(task_id), [error, now]))

    async def complete(
        self,
        task_id: str,
        *,
        token_hash: str,
        shared_secret_ok: bool,
        status: str,
        result: dict[str, Any],
        summary: str,
        now: str,
    ) -> Completion:
        """Record a callback's result atomically: auth check, idempotency and the write in one step."""
        args = completion_args(token_hash, shared_secret_ok, status, result, summary, now)
        return completion_of(await self._complete(key(task_id), args))

    def queue_mark_recorded(self, batch: Batch, task_id: str, now: str) -> None:
        batch.eval(lua.HSET_IF_EXISTS, [key(task_id)], ["recordedAt", now])

    def queue_mark_delivered(self, batch: Batch, task_id: str, conversation_id: str, via: str, now: str) -> None:
        """Only a task of this conversation whose result is stored: an ack names ids the client chose."""
        batch.eval(_MARK_DELIVERED, [key(task_id)], [conversation_id, now, via])

    async def get(self, task_id: str) -> Task | None:
        h = cast(dict[str, str], await self.redis.hgetall(key(task_id)))
        return Task.from_hash(h) if h else None

    async def get_many(self, task_ids: list[str]) -> list[Task]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(key(task_id))
            hashes = await pipe.execute()
        return [Task.from_hash(h) for h in hashes if h]

    async def summary(
        self,
        *,
        stuck_age: float = STUCK_TASK_AGE,
        max_keys: int | None = None,
        unrecorded_after: float | None = None,
        max_unrecorded: int = 1000,
        count: int = SCAN_COUNT,
        pace: Pace | None = None,
    ) -> TaskSummary:
        """Tasks per status, the oldest pending one's age and how many are stuck (pending longer than
        `stuck_age`). With `max_keys`, stops after about that many keys (a bounded, partial view).
        With `unrecorded_after`, also the ids (at most `max_unrecorded`) of tasks whose callback was
        stored at least that many seconds ago but whose recording never finished. `count` keys per
        SCAN, `pace` between batches (stores/keyspace.py)."""
        summary = TaskSummary()
        now = time.time()
        async for keys in scan_batches(self.redis, SCAN_PATTERN, count, pace):
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_key in keys:
                    pipe.hmget(task_key, ["status", "createdAt", "taskId", "callbackAt", "recordedAt"])
                replies = await pipe.execute()
            for status, created, task_id, callback_at, recorded_at in replies:
                if status is None and created is None:
                    continue  # expired between SCAN and HMGET
                if (
                    unrecorded_after is not None
                    and task_id
                    and callback_at
                    and not recorded_at
                    and len(summary.unrecorded) < max_unrecorded
                ):
                    callback_age = age_seconds(callback_at, now)
                    if callback_age is not None and callback_age >= unrecorded_after:
                        summary.unrecorded.append(task_id)
                # Only a pending task's age is used: most tasks are done, and parsing is the cost here.
                summary.add(status, age_seconds(created, now) if status == "pending" else None, stuck_age)
            summary.scanned += len(keys)
            if max_keys is not None and summary.scanned >= max_keys:
                break
        return summary
