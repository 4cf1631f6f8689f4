"""Put a backup (JSON lines from purge) back: each key with its recorded remaining TTL.

Existing keys are left alone unless `force`; a dry run (the default) only counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from elevenlabs_agent.ops.keyspace import queue_write, record_problem

BATCH = 1000


@dataclass
class RestoreReport:
    dry_run: bool
    read: int = 0
    restored: int = 0
    skipped_existing: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "read": self.read,
            "restored": self.restored,
            "skippedExisting": self.skipped_existing,
        }


class BackupFormatError(ValueError):
    pass


def read_backup(path: Path) -> Iterator[list[dict[str, Any]]]:
    """Batches of validated records; BackupFormatError names the first bad line."""
    batch: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise BackupFormatError(f"{path}:{number}: not JSON") from None
            if (problem := record_problem(record)) is not None:
                raise BackupFormatError(f"{path}:{number}: not a backup record ({problem})")
            batch.append(record)
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


async def restore(
    redis: Redis, path: Path, *, execute: bool, force: bool, progress: Callable[[RestoreReport], None] | None = None
) -> RestoreReport:
    report = RestoreReport(dry_run=not execute)
    for _ in read_backup(path):
        pass  # the whole file is checked before anything is written
    for batch in read_backup(path):
        report.read += len(batch)
        async with redis.pipeline(transaction=False) as pipe:
            for record in batch:
                pipe.exists(record["key"])
            exists = await pipe.execute()
        todo = [r for r, e in zip(batch, exists, strict=True) if force or not e]
        report.skipped_existing += len(batch) - len(todo)
        if execute and todo:
            async with redis.pipeline(transaction=False) as pipe:
                for record in todo:
                    pipe.delete(record["key"])
                    queue_write(pipe, record["key"], record["type"], record["value"])
                    if record["ttl_ms"] > 0:
                        pipe.pexpire(record["key"], record["ttl_ms"])
                await pipe.execute()
        report.restored += len(todo)
        if progress is not None:
            progress(report)
    return report
