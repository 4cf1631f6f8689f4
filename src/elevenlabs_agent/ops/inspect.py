"""Read-only views for operators: per-family stats and listings of sessions, tasks, conversations.

The scans themselves belong to the stores (each one knows its key family); this module shapes what
they find for the CLI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from elevenlabs_agent.stores import KEY_FAMILIES, KeyFamily, family
from elevenlabs_agent.stores.keyspace import footprint, hash_rows
from elevenlabs_agent.stores.outbox import Outbox
from elevenlabs_agent.stores.tasks import TaskStore
from elevenlabs_agent.timeutil import age_seconds

# The fields each listing shows, and the hash field that dates a record.
LIST_FIELDS = {
    "sessions": ("conversationId", "sessionId", "transport", "pushUrl", "registeredAt", "lastTaskId"),
    "tasks": ("taskId", "conversationId", "toolName", "status", "delivery", "createdAt", "completedAt"),
    "conversations": ("conversationId", "agentId", "createdAt", "lastAccessedAt", "seq"),
}
DATE_FIELD = {"sessions": "registeredAt", "tasks": "createdAt", "conversations": "createdAt"}


async def list_family(
    redis: Redis, name: str, *, status: str | None = None, older_than: float | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Up to `limit` records of a hash family, oldest first, with age and remaining TTL."""
    now = time.time()
    rows: list[dict[str, Any]] = []
    async for batch in hash_rows(redis, family(name).pattern, LIST_FIELDS[name]):
        for found in batch:
            row: dict[str, Any] = {"key": found.key, **found.values}
            row["ageSeconds"] = age_seconds(row.get(DATE_FIELD[name]), now)
            row["ttlSeconds"] = found.ttl
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


async def family_stats(redis: Redis, fam: KeyFamily) -> FamilyStats:
    """Count, memory (estimated from a sample) and TTL-less keys of one family; for tasks also the
    count per status, the oldest pending age and how many are stuck; for pending results how many
    wait and for how long."""
    found = await footprint(redis, fam.pattern)
    stats = FamilyStats(fam.name, fam.pattern, found.count, found.memory_bytes_estimate, found.persistent)
    if fam.name == "tasks":
        summary = await TaskStore(redis).summary()
        stats.extra = {
            "byStatus": summary.by_status,
            "oldestPendingSeconds": round(summary.oldest_pending_seconds, 1),
            "stuckPending": summary.stuck_pending,
        }
    elif fam.name == "pending_results":
        waiting = await Outbox(redis, redis).waiting()
        stats.extra = {"resultsWaiting": waiting.count, "oldestWaitingSeconds": round(waiting.oldest_seconds, 1)}
    return stats


async def all_stats(redis: Redis) -> list[FamilyStats]:
    return [await family_stats(redis, fam) for fam in KEY_FAMILIES]
