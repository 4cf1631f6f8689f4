"""Replays the callback spool (spool.py) into Redis through the normal recording path.

While anything is spooled, Redis is pinged every `interval` seconds; as soon as it answers, the
journal is replayed in arrival order (this process's slot, then any slot no live process holds: what
a killed predecessor or a worker that is gone left). Each record is recorded exactly as a callback
is (`CallbackService.replay`: secret checked against the task, first callback wins), so replaying a
record twice (a replay cut short by a crash) is harmless. A Redis failure stops the pass; the next
one resumes at the first record not yet recorded. A segment is deleted once all of it is recorded.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.exceptions import RedisError

from elevenlabs_agent import events, metrics
from elevenlabs_agent.background import BackgroundLoop
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.services.callbacks import CallbackService
from elevenlabs_agent.spool import Journal, JournalLine, read_lines, remove_segment, segments, slot_dirs, try_lock

log = get_logger()
ORPHAN_CHECK_SECONDS = 5.0


class ReplayStats:
    """What one replay pass did (the CLI prints it)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.skipped = 0
        self.complete = True

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {"outcomes": self.outcomes, "skippedTorn": self.skipped, "complete": self.complete}


class SpoolReplayer(BackgroundLoop):
    def __init__(
        self,
        journal: Journal,
        callbacks: CallbackService,
        redis_up: Callable[[], Awaitable[bool]],
        interval: float = 0.5,
    ) -> None:
        self.journal = journal
        self.callbacks = callbacks
        self.redis_up = redis_up
        self.interval = interval
        # segment -> offset of its first line not yet replayed (a pass stopped by a Redis failure)
        self._resume: dict[Path, int] = {}
        self._next_orphan_check = 0.0
        self._paused = False

    async def _run(self) -> None:
        while True:
            self.update_gauges()
            try:
                if await self._has_work() and await self.redis_up():
                    await self.replay()
                    self._paused = False
            except (RedisError, OSError, TimeoutError) as exc:  # REDIS_UNREACHABLE, and disk trouble
                # Once per interruption, not on every retry (a cluster master can stay down a while).
                if not self._paused:
                    log.warning(events.SPOOL_REPLAY_PAUSED, error=type(exc).__name__, pending=self.journal.records)
                self._paused = True
            self.update_gauges()
            await asyncio.sleep(self.interval)

    async def _has_work(self) -> bool:
        if self.journal.records or self.journal.bytes:
            return True
        # Slots left by processes that are gone: looked for now and then, not on every tick.
        if time.monotonic() < self._next_orphan_check:
            return False
        self._next_orphan_check = time.monotonic() + ORPHAN_CHECK_SECONDS
        return any(segments(slot) for slot in slot_dirs(self.journal.directory) if slot != self.journal.slot_dir)

    def update_gauges(self) -> None:
        metrics.CALLBACK_SPOOL_RECORDS.set(self.journal.records)
        metrics.CALLBACK_SPOOL_BYTES.set(self.journal.bytes)
        oldest = self.journal.oldest_epoch
        metrics.CALLBACK_SPOOL_OLDEST_AGE.set(max(0.0, time.time() - oldest) if oldest else 0)

    async def replay(self, stats: ReplayStats | None = None) -> ReplayStats:
        """One pass over this process's slot, then over every slot no live process holds. Redis
        failures propagate (what was replayed stays replayed)."""
        stats = stats or ReplayStats()
        started, before = time.monotonic(), sum(stats.outcomes.values())
        if self.journal.slot_dir is not None:
            for segment in await self.journal.seal():
                await self._replay_segment(segment, stats, own=True)
        for slot in slot_dirs(self.journal.directory):
            if slot == self.journal.slot_dir or not segments(slot):
                continue
            fd = try_lock(slot)
            if fd is None:
                continue  # a live process owns it and replays it itself
            try:
                for segment in segments(slot):
                    await self._replay_segment(segment, stats, own=False)
            finally:
                os.close(fd)
        replayed = sum(stats.outcomes.values()) - before
        if replayed or stats.skipped:
            elapsed = time.monotonic() - started
            log.info(
                events.SPOOL_DRAINED,
                records=replayed,
                outcomes=stats.outcomes,
                skippedTorn=stats.skipped,
                seconds=round(elapsed, 3),
                perSecond=round(replayed / elapsed, 1) if elapsed > 0 else None,
            )
        return stats

    async def _replay_segment(self, segment: Path, stats: ReplayStats, *, own: bool) -> None:
        offset = self._resume.get(segment, 0)
        for line in read_lines(segment, offset):
            if line.record is None:
                self._skip(line, stats)
            else:
                try:
                    stats.count(await self.callbacks.replay(line.record))
                except BaseException:
                    self._resume[segment] = line.offset
                    stats.complete = False
                    raise
            self._resume[segment] = line.end
            if own:
                self.journal.forget(line)
                self.journal.next_oldest(line.record)
            await asyncio.sleep(0)  # a long journal does not starve the requests being served
        remove_segment(segment)
        self._resume.pop(segment, None)

    def _skip(self, line: JournalLine, stats: ReplayStats) -> None:
        stats.skipped += 1
        log.warning(
            events.SPOOL_RECORD_SKIPPED,
            segment=str(line.segment),
            offset=line.offset,
            bytes=line.end - line.offset,
            reason="torn or damaged record (checksum or newline missing); it was never acknowledged",
        )
        metrics.CALLBACKS_DISCARDED.labels("torn").inc()
