"""Read-only views for operators: per-family stats and listings of sessions, tasks, conversations."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from elevenlabs_agent.ops.keyspace import scan_batches
from elevenlabs_agent.stores import KEY_FAMILIES, KeyFamily, family
from elevenlabs_agent.timeutil import parse_iso

MEMORY_SAMPLE = 50
STUCK_TASK_AGE = 86_400.0

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


async def family_stats(redis: Redis, fam: KeyFamily, stuck_age: float = STUCK_TASK_AGE) -> FamilyStats:
    """Count, memory (estimated from a sample) and TTL-less keys of one family; for tasks also the
    count per status, the oldest pending age and how many are stuck (pending longer than `stuck_age`)."""
    stats = FamilyStats(fam.name, fam.pattern)
    sampled: list[str] = []
    statuses: dict[str, int] = {}
    oldest_pending = 0.0
    stuck = 0
    now = time.time()
    async for keys in scan_batches(redis, fam.pattern):
        stats.count += len(keys)
        sampled += keys[: max(0, MEMORY_SAMPLE - len(sampled))]
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
                if fam.name == "tasks":
                    pipe.hmget(key, ["status", "createdAt"])
            replies = await pipe.execute()
        step = 2 if fam.name == "tasks" else 1
        for i in range(len(keys)):
            if replies[i * step] == -1:
                stats.persistent += 1
            if fam.name == "tasks":
                status, created = replies[i * step + 1]
                statuses[status or "unknown"] = statuses.get(status or "unknown", 0) + 1
                age = _age(created, now)
                if status == "pending" and age is not None:
                    oldest_pending = max(oldest_pending, age)
                    stuck += age >= stuck_age
    if sampled:
        async with redis.pipeline(transaction=False) as pipe:
            for key in sampled:
                pipe.memory_usage(key)
            usage = [u for u in await pipe.execute() if u]
        if usage:
            stats.memory_bytes_estimate = int(sum(usage) / len(usage) * stats.count)
    if fam.name == "tasks":
        stats.extra = {"byStatus": statuses, "oldestPendingSeconds": round(oldest_pending, 1), "stuckPending": stuck}
    return stats


async def all_stats(redis: Redis) -> list[FamilyStats]:
    return [await family_stats(redis, fam) for fam in KEY_FAMILIES]
