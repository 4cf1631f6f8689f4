"""Purge stuck tasks or sessions: dry run by default; for real, backup first, then batched UNLINK.

Each SCAN batch is read (values and TTLs), filtered, appended to the backup file and flushed, and
only then unlinked, so the backup always holds everything that was deleted. A lease keeps two purges
from running at once; running the same purge twice is harmless (the second finds nothing).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from redis.asyncio import Redis

from elevenlabs_agent.ops.keyspace import read_keys, scan_batches
from elevenlabs_agent.stores import KeyFamily
from elevenlabs_agent.stores.locks import Lease
from elevenlabs_agent.timeutil import parse_iso

SAMPLE_SIZE = 20
# Which hash field dates each purgeable family, for --older-than.
AGE_FIELD = {"tasks": "createdAt", "sessions": "registeredAt"}


@dataclass(frozen=True)
class PurgeFilter:
    older_than: float | None = None  # seconds
    status: str | None = None  # tasks only

    def matches(self, family: str, value: dict[str, str], now: float) -> bool:
        if self.status is not None and value.get("status") != self.status:
            return False
        if self.older_than is not None:
            stamp = value.get(AGE_FIELD[family])
            if not stamp:
                return True  # undated records are the stuck ones an operator is after
            try:
                created = parse_iso(stamp).timestamp()
            except ValueError:
                return True
            return now - created >= self.older_than
        return True


@dataclass
class PurgeReport:
    family: str
    dry_run: bool
    scanned: int = 0
    matched: int = 0
    deleted: int = 0
    backup: str | None = None
    sample: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "dryRun": self.dry_run,
            "scanned": self.scanned,
            "matched": self.matched,
            "deleted": self.deleted,
            "backup": self.backup,
            "sample": self.sample,
        }


Progress = Callable[[PurgeReport], None]


async def purge(
    redis: Redis,
    family: KeyFamily,
    flt: PurgeFilter,
    *,
    execute: bool,
    backup: Path | None,
    progress: Progress | None = None,
) -> PurgeReport:
    report = PurgeReport(family.name, dry_run=not execute, backup=str(backup) if execute and backup else None)
    if not execute:
        await _walk(redis, family, flt, report, None, progress)
        return report
    if backup is None:
        raise ValueError("a real purge needs a backup file")
    lease = Lease(redis, "purge")
    await lease.acquire()
    try:
        with backup.open("a", encoding="utf-8") as out:
            await _walk(redis, family, flt, report, (out, lease), progress)
            out.flush()
    finally:
        await lease.release()
    return report


async def _walk(
    redis: Redis,
    family: KeyFamily,
    flt: PurgeFilter,
    report: PurgeReport,
    sink: tuple[TextIO, Lease] | None,
    progress: Progress | None,
) -> None:
    now = time.time()
    async for keys in scan_batches(redis, family.pattern):
        report.scanned += len(keys)
        records = await read_keys(redis, keys, family.redis_type)
        doomed = [r for r in records if flt.matches(family.name, r["value"], now)]
        report.matched += len(doomed)
        for record in doomed[: SAMPLE_SIZE - len(report.sample)]:
            report.sample.append({"key": record["key"], "ttl_ms": record["ttl_ms"], **_summary(record["value"])})
        if sink is not None and doomed:
            out, lease = sink
            out.write("".join(orjson.dumps(r).decode() + "\n" for r in doomed))
            out.flush()  # the backup of a batch is written before the batch is deleted
            report.deleted += await redis.unlink(*[r["key"] for r in doomed])
            await lease.renew()
        if progress is not None:
            progress(report)


def _summary(value: dict[str, str]) -> dict[str, str]:
    keep = ("taskId", "conversationId", "status", "createdAt", "registeredAt", "sessionId")
    return {k: value[k] for k in keep if k in value}
