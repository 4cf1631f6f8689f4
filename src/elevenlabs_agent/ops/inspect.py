"""Read-only views for operators: per-family stats and listings of sessions, tasks, conversations."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from elevenlabs_agent.ops.keyspace import scan_batches
from elevenlabs_agent.stores import KEY_FAMILIES, KeyFamily, family, outbox
from elevenlabs_agent.timeutil import parse_iso

MEMORY_SAMPLE = 50
# cursor-runner works for minutes; a task still pending after an hour has lost its callback. (Tasks
# expire after 24 h, so a 24 h threshold would only ever see keys that lost their TTL.)
STUCK_TASK_AGE = 3_600.0
# Work younger than this may still be in progress on some instance: leave it alone.
RECOVERY_GRACE = 30.0
MAX_RECOVERY_BATCH = 1000

# The fields each listing shows, and the hash field that dates a record.
LIST_FIELDS = {
    "sessions": ("conversationId", "sessionId", "transport", "pushUrl", "registeredAt", "lastTaskId"),
    "tasks": ("taskId", "conversationId", "toolName", "status", "delivery", "createdAt", "completedAt"),
    "conversations": ("conversationId", "agentId", "createdAt", "lastAccessedAt", "seq"),
}
DATE_FIELD = {"sessions": "registeredAt", "tasks": "createdAt", "conversations": "createdAt"}


def _age(stamp: str | None, now: float) -> float | None:
    if not stamp:
        return None
    try:
        return now - parse_iso(stamp).timestamp()
    except ValueError:
        return None


async def list_family(
    redis: Redis, name: str, *, status: str | None = None, older_than: float | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Up to `limit` records of a hash family, oldest first, with age and remaining TTL."""
    fam = family(name)
    fields = LIST_FIELDS[name]
    now = time.time()
    rows: list[dict[str, Any]] = []
    async for keys in scan_batches(redis, fam.pattern):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, list(fields))
                pipe.ttl(key)
            replies = await pipe.execute()
        for i, key in enumerate(keys):
            values, ttl = replies[2 * i], replies[2 * i + 1]
            if ttl == -2:
                continue
            row: dict[str, Any] = {"key": key, **{f: v for f, v in zip(fields, values, strict=True) if v is not None}}
            row["ageSeconds"] = _age(row.get(DATE_FIELD[name]), now)
            row["ttlSeconds"] = ttl
            if status is not None and row.get("status") != status:
                continue
            if older_than is not None and (row["ageSeconds"] is not None and row["ageSeconds"] < older_than):
                continue
            rows.append(row)
    rows.sort(key=lambda r: -(r["ageSeconds"] or 0))
    return rows[:limit]


@dataclass
class TaskSummary:
    by_status: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    oldest_pending_seconds: float = 0.0
    stuck_pending: int = 0
    scanned: int = 0
    unrecorded: list[str] = field(default_factory=list)  # callback stored, recording cut short


async def task_summary(redis: Redis, stuck_age: float = STUCK_TASK_AGE, max_keys: int | None = None) -> TaskSummary:
    """Tasks per status, the oldest pending one's age and how many are stuck (pending longer than
    `stuck_age`). With `max_keys`, stops after about that many keys (a bounded, partial view)."""
    summary = TaskSummary()
    now = time.time()
    async for keys in scan_batches(redis, family("tasks").pattern):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, ["status", "createdAt", "taskId", "callbackAt", "recordedAt"])
            replies = await pipe.execute()
        for status, created, task_id, callback_at, recorded_at in replies:
            if status is None and created is None:
                continue  # expired between SCAN and HMGET
            if callback_at and not recorded_at and len(summary.unrecorded) < MAX_RECOVERY_BATCH:
                callback_age = _age(callback_at, now)
                if task_id and callback_age is not None and callback_age >= RECOVERY_GRACE:
                    summary.unrecorded.append(task_id)
            summary.by_status[status or "unknown"] = summary.by_status.get(status or "unknown", 0) + 1
            age = _age(created, now)
            if status == "pending":
                summary.pending += 1
                if age is not None:
                    summary.oldest_pending_seconds = max(summary.oldest_pending_seconds, age)
                    summary.stuck_pending += age >= stuck_age
        summary.scanned += len(keys)
        if max_keys is not None and summary.scanned >= max_keys:
            break
    return summary


@dataclass
class WaitingResults:
    count: int = 0
    oldest_seconds: float = 0.0
    stale_conversations: list[str] = field(default_factory=list)  # waiting longer than RECOVERY_GRACE


async def waiting_results(redis: Redis, max_keys: int | None = None) -> WaitingResults:
    """Results no channel has confirmed yet: how many, the oldest one's age, and the conversations
    whose results have waited long enough to be offered again.

    A result's age comes from its stream id, whose first part is its publication time in ms.
    """
    waiting, scanned, now_ms = WaitingResults(), 0, time.time() * 1000
    async for keys in scan_batches(redis, family("pending_results").pattern):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hvals(key)
            replies = await pipe.execute()
        for key, values in zip(keys, replies, strict=True):
            oldest_ms = min((_event_ms(v) for v in values), default=now_ms)
            waiting.count += len(values)
            waiting.oldest_seconds = max(waiting.oldest_seconds, (now_ms - oldest_ms) / 1000)
            stale = (now_ms - oldest_ms) / 1000 >= RECOVERY_GRACE
            if values and stale and len(waiting.stale_conversations) < MAX_RECOVERY_BATCH:
                waiting.stale_conversations.append(outbox.conversation_of(key))
        scanned += len(keys)
        if max_keys is not None and scanned >= max_keys:
            break
    return waiting


def _event_ms(value: str) -> float:
    event_id = orjson.loads(value).get("eventId", "")
    return float(event_id.partition("-")[0] or 0)


async def count_keys(redis: Redis, pattern: str, max_keys: int | None = None) -> int:
    count = 0
    async for keys in scan_batches(redis, pattern):
        count += len(keys)
        if max_keys is not None and count >= max_keys:
            break
    return count


@dataclass
class FamilyStats:
    name: str
    pattern: str
    count: int = 0
    memory_bytes_estimate: int = 0
    persistent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.name,
            "pattern": self.pattern,
            "count": self.count,
            "memoryBytesEstimate": self.memory_bytes_estimate,
            "withoutTtl": self.persistent,
            **self.extra,
        }


async def family_stats(redis: Redis, fam: KeyFamily) -> FamilyStats:
    """Count, memory (estimated from a sample) and TTL-less keys of one family; for tasks also the
    count per status, the oldest pending age and how many are stuck; for pending results how many
    wait and for how long."""
    stats = FamilyStats(fam.name, fam.pattern)
    sampled: list[str] = []
    async for keys in scan_batches(redis, fam.pattern):
        stats.count += len(keys)
        sampled += keys[: max(0, MEMORY_SAMPLE - len(sampled))]
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
            stats.persistent += sum(ttl == -1 for ttl in await pipe.execute())
    if sampled:
        async with redis.pipeline(transaction=False) as pipe:
            for key in sampled:
                pipe.memory_usage(key)
            usage = [u for u in await pipe.execute() if u]
        if usage:
            stats.memory_bytes_estimate = int(sum(usage) / len(usage) * stats.count)
    if fam.name == "tasks":
        summary = await task_summary(redis)
        stats.extra = {
            "byStatus": summary.by_status,
            "oldestPendingSeconds": round(summary.oldest_pending_seconds, 1),
            "stuckPending": summary.stuck_pending,
        }
    elif fam.name == "pending_results":
        waiting = await waiting_results(redis)
        stats.extra = {"resultsWaiting": waiting.count, "oldestWaitingSeconds": round(waiting.oldest_seconds, 1)}
    return stats


async def all_stats(redis: Redis) -> list[FamilyStats]:
    return [await family_stats(redis, fam) for fam in KEY_FAMILIES]
