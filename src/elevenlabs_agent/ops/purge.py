"""Purge stuck tasks or sessions: dry run by default; for real, backup first, then batched UNLINK.

Each SCAN batch is read whole (values and remaining TTLs, through the pipelined `HashReader`),
filtered, appended to the backup file and flushed, and only then unlinked: the backup always holds
everything that was deleted. On a Redis Cluster each master is walked in turn, its keys read and
unlinked on that master. Every command stays small (batches of 1000 keys), so Redis never
blocks for long. A lease keeps two purges from running at once; running the same purge twice is
harmless (the second finds nothing).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import orjson
from redis.asyncio import Redis

from elevenlabs_agent.ops.bulk import HashReader
from elevenlabs_agent.redis.clients import DataNode, data_nodes, is_cluster
from elevenlabs_agent.stores import KeyFamily
from elevenlabs_agent.stores.keyspace import scan_batches, scan_node_batches
from elevenlabs_agent.stores.locks import Lease


class BackupFailed(Exception):
    """The backup could not be written; the batch it was for was not deleted."""


SAMPLE_SIZE = 20
BATCH = 1000
# Which hash field dates each purgeable family, for --older-than.
AGE_FIELD = {"tasks": "createdAt", "sessions": "registeredAt"}


@dataclass(frozen=True)
class PurgeFilter:
    older_than: float | None = None  # seconds
    status: str | None = None  # tasks only

    def matcher(self, family: str) -> Callable[[dict[str, str]], bool]:
        """Timestamps are fixed-width ISO 8601 UTC, so they compare as strings; an undated record
        matches (undated records are the stuck ones an operator is after)."""
        cutoff = None
        if self.older_than is not None:
            moment = datetime.fromtimestamp(time.time() - self.older_than, UTC)
            cutoff = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        date_field, status = AGE_FIELD[family], self.status

        def matches(value: dict[str, str]) -> bool:
            if status is not None and value.get("status") != status:
                return False
            dated = value.get(date_field)
            return cutoff is None or dated is None or dated <= cutoff

        return matches


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


@dataclass(frozen=True)
class Source:
    """Where a purge reads and deletes: one server, or one master of a cluster (its own keys)."""

    open_reader: Callable[[], Awaitable[HashReader]]
    batches: Callable[[str, int], AsyncIterator[list[str]]]


async def sources(redis: Redis, redis_url: str) -> list[Source]:
    """One source for a single server or a Sentinel master, one per master on a Redis Cluster."""
    return [_source(redis, node) for node in await data_nodes(redis, redis_url)]


def _source(redis: Redis, node: DataNode) -> Source:
    reader = partial(HashReader.connect, node.options, cluster=node.cluster_node is not None)
    if node.cluster_node is not None and is_cluster(redis):
        return Source(reader, partial(scan_node_batches, redis, node.cluster_node))
    return Source(reader, partial(scan_batches, redis))


async def purge(
    redis: Redis,
    redis_url: str,
    family: KeyFamily,
    flt: PurgeFilter,
    *,
    execute: bool,
    backup: Path | None,
    progress: Progress | None = None,
) -> PurgeReport:
    report = PurgeReport(family.name, dry_run=not execute, backup=str(backup) if execute and backup else None)
    if execute and backup is None:
        raise ValueError("a real purge needs a backup file")
    if not execute:
        for source in await sources(redis, redis_url):
            await _walk_source(source, family, flt, report, None, progress)
        return report
    assert backup is not None
    lease = Lease(redis, "purge")
    await lease.acquire()
    try:
        with backup.open("a", encoding="utf-8") as out:
            for source in await sources(redis, redis_url):
                await _walk_source(source, family, flt, report, out, progress, lease)
    except OSError as exc:
        raise BackupFailed(
            f"cannot write the backup {backup}: {exc.strerror or exc}; nothing more was deleted"
        ) from None
    finally:
        await lease.release()
    return report


async def _walk_source(
    source: Source,
    family: KeyFamily,
    flt: PurgeFilter,
    report: PurgeReport,
    out: TextIO | None,
    progress: Progress | None,
    lease: Lease | None = None,
) -> None:
    reader = await source.open_reader()
    try:
        await _walk(source.batches(family.pattern, BATCH), reader, family, flt, report, out, progress, lease)
    finally:
        await reader.aclose()


async def _walk(
    batches: AsyncIterator[list[str]],
    reader: HashReader,
    family: KeyFamily,
    flt: PurgeFilter,
    report: PurgeReport,
    out: TextIO | None,
    progress: Progress | None,
    lease: Lease | None = None,
) -> None:
    matches = flt.matcher(family.name)
    unlink_batches = 0
    in_flight: list[str] | None = None
    seen: set[int] = set()
    while True:
        # Keep one batch's reads in flight while the previous one is filtered and written.
        batch = await anext(batches, None)
        if batch is not None:
            # SCAN may return a key twice (while Redis rehashes); the second copy must not be backed
            # up again. Hashes suffice: a collision can only make us skip a key, never delete one.
            batch = [key for key in batch if hash(key) not in seen]
            seen.update(hash(key) for key in batch)
            reader.send_reads(batch)
            report.scanned += len(batch)
        if in_flight is not None:
            records = [r for r in await reader.receive_reads(in_flight) if matches(r[2])]
            report.matched += len(records)
            for key, ttl, value in records[: max(0, SAMPLE_SIZE - len(report.sample))]:
                report.sample.append({"key": key, "ttl_ms": ttl, **_summary(value)})
            if out is not None and records:
                out.write("".join(_backup_line(*record) for record in records))
                out.flush()  # the backup of a batch is written before the batch is deleted
                reader.send_unlink([key for key, _, _ in records])
                unlink_batches += 1
                if lease is not None and unlink_batches % 50 == 0:
                    await lease.renew()
            if progress is not None:
                progress(report)
        if batch is None:
            break
        in_flight = batch
    await reader.finish_unlinks()
    report.deleted += reader.unlinked
    if progress is not None:
        progress(report)


def _backup_line(key: str, ttl: int, value: dict[str, str]) -> str:
    return orjson.dumps({"key": key, "type": "hash", "ttl_ms": ttl, "value": value}).decode() + "\n"


def _summary(value: dict[str, str]) -> dict[str, str]:
    keep = ("taskId", "conversationId", "status", "createdAt", "registeredAt", "sessionId")
    return {k: value[k] for k in keep if k in value}
