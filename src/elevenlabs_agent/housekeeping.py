"""Background housekeeping: keyspace gauges, and finishing work a crash or outage interrupted.

A scrape must never walk the keyspace, so every `interval` seconds one bounded SCAN pass (at most
`max_keys` keys per family) refreshes the keyspace gauges. The same pass finds work that no process
is doing any more (a restarted or another instance picks it up; nothing lives only in memory):
- results whose callback was stored but whose recording was cut short -> recorded again;
- results waiting for longer than the grace period while a push-capable session is live ->
  pushed again (the relay channel needs nothing: every SSE subscription replays what is pending);
- conversations missing from the listing indexes (stored before an index existed) -> indexed, and on
  Redis Cluster the message counts of recently accessed conversations refreshed.
Redis reachability is checked every few seconds, also while a pass runs. With several instances
each one does this; every step is idempotent and repeated pushes carry the same context_id, so that
is harmless.

A pass runs on the event loop that serves requests, so it is paced (`Pacer`): keys are read
SCAN_BATCH at a time, and after each batch the pass sleeps (1 - DUTY) / DUTY times the CPU time the
loop used since the previous pause (at most MAX_PAUSE). It never holds the loop for more than one
small batch and takes about DUTY of the loop's time when idle, less under load (requests served
meanwhile count, so its pauses grow). Read in batches of 1,000 without pauses, 200,000 tasks held
requests back for seconds after a restart (bench/restart.py); paced, the pass takes longer
(`keyspace_scan_duration_seconds` is its wall time, pauses included) and requests keep their latency.

Process-level: it drives the services of one `Runtime`, and every scan goes through the store that
owns the key family.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis.exceptions import RedisError

from elevenlabs_agent import events, metrics
from elevenlabs_agent.background import BackgroundLoop
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.runtime import Runtime

log = get_logger()
PING_INTERVAL = 5.0
# Work younger than this may still be in progress on some instance: leave it alone.
RECOVERY_GRACE = 30.0
MAX_RECOVERY_BATCH = 1000
# Pacing (module docstring): keys per batch (a few ms of Python each), the share of the loop's time
# a pass may take, and the longest pause after one batch.
SCAN_BATCH = 200
DUTY = 0.2
MAX_PAUSE = 0.1
# Repairs and re-pushes are started this many at a time, at least RECOVERY_PAUSE apart: up to
# MAX_RECOVERY_BATCH of each can be due at once after an outage or a restart, and a re-push runs
# after it is spawned, where the pacer does not see its cost.
RECOVERY_STEP = 50
RECOVERY_PAUSE = 0.05


class Pacer:
    """Awaited between two batches of a pass: sleeps (1 - duty) / duty times the CPU time the loop's
    thread used since it last returned. That is the batch's own Python plus whatever requests were
    served meanwhile, so the pass backs off under load; CPU rather than wall time, so that a process
    waiting for a core on a busy machine does not take that for work."""

    def __init__(self, duty: float = DUTY, max_pause: float = MAX_PAUSE) -> None:
        self.ratio = (1 - duty) / duty
        self.max_pause = max_pause
        self.mark = time.thread_time()

    async def __call__(self, at_least: float = 0.0) -> None:
        pause = min(self.max_pause, (time.thread_time() - self.mark) * self.ratio)
        await asyncio.sleep(max(at_least, pause))
        self.mark = time.thread_time()


class Housekeeper(BackgroundLoop):
    def __init__(self, runtime: Runtime, interval: float, max_keys: int) -> None:
        self.runtime = runtime
        self.interval = interval
        self.max_keys = max_keys

    async def _run(self) -> None:
        next_pass = 0.0
        running: asyncio.Task[None] | None = None
        try:
            while True:
                up, _ = await self.runtime.redis_ping()
                metrics.REDIS_UP.set(up)
                metrics.DRAINING.set(self.runtime.draining)
                metrics.INFLIGHT_DELIVERIES.set(self.runtime.delivery.inflight)
                if running is not None and running.done():
                    finished, running = running, None
                    finished.result()  # a bug in a pass ends housekeeping loudly, as it always did
                due = not self.runtime.draining and running is None and time.monotonic() >= next_pass
                if due:
                    next_pass = time.monotonic() + self.interval
                    if up:
                        # Beside this loop, so the gauges above stay fresh during a long paced pass.
                        running = asyncio.create_task(self.run_pass())
                    else:
                        log.warning(events.HOUSEKEEPING_FAILED, error="redis unreachable")
                await asyncio.sleep(min(PING_INTERVAL, self.interval))
        finally:
            if running is not None:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running

    async def run_pass(self) -> None:
        stores = self.runtime.stores
        started = time.perf_counter()
        pace = Pacer()
        try:
            sessions = await stores.sessions.count(self.max_keys, count=SCAN_BATCH, pace=pace)
            tasks = await stores.tasks.summary(
                max_keys=self.max_keys,
                unrecorded_after=RECOVERY_GRACE,
                max_unrecorded=MAX_RECOVERY_BATCH,
                count=SCAN_BATCH,
                pace=pace,
            )
            waiting = await stores.outbox.waiting(
                max_keys=self.max_keys,
                stale_after=RECOVERY_GRACE,
                max_stale=MAX_RECOVERY_BATCH,
                count=SCAN_BATCH,
                pace=pace,
            )
            for ids in _steps(tasks.unrecorded):
                await self.runtime.callbacks.repair(ids)
                await pace(RECOVERY_PAUSE)
            for conversation_ids in _steps(waiting.stale_conversations):
                for conversation_id in conversation_ids:
                    self.runtime.delivery.spawn(self.runtime.delivery.redeliver(conversation_id))
                await pace(RECOVERY_PAUSE)
            indexed = await stores.conversations.repair_indexes(self.max_keys, SCAN_BATCH, pace)
            if indexed:
                log.info(events.CONVERSATION_INDEX_REPAIRED, entries=indexed)
        except (RedisError, OSError) as exc:
            log.warning(events.HOUSEKEEPING_FAILED, error=type(exc).__name__)
            return
        metrics.ACTIVE_SESSIONS.set(sessions)
        metrics.PENDING_TASKS.set(tasks.pending)
        metrics.OLDEST_PENDING_TASK_AGE.set(tasks.oldest_pending_seconds)
        metrics.STUCK_PENDING_TASKS.set(tasks.stuck_pending)
        metrics.RESULTS_WAITING.set(waiting.count)
        metrics.OLDEST_RESULT_WAITING_AGE.set(waiting.oldest_seconds)
        metrics.KEYSPACE_SCAN_DURATION.set(time.perf_counter() - started)
        metrics.KEYSPACE_SCAN_TIMESTAMP.set(time.time())


def _steps(items: list[str]) -> list[list[str]]:
    return [items[i : i + RECOVERY_STEP] for i in range(0, len(items), RECOVERY_STEP)]
