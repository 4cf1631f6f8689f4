"""Background refresh of the gauges that need Redis: a scrape must never walk the keyspace.

Every `interval` seconds one bounded SCAN pass (at most `max_keys` keys per family) updates the
keyspace gauges; Redis reachability is checked more often. With several instances each one scans;
the figures are the same, so dashboards take max() across instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis.exceptions import RedisError

from elevenlabs_agent import events, metrics
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.ops.inspect import count_keys, task_summary, waiting_results
from elevenlabs_agent.runtime import Runtime
from elevenlabs_agent.stores import family

log = get_logger()
PING_INTERVAL = 5.0


class KeyspaceMonitor:
    def __init__(self, runtime: Runtime, interval: float, max_keys: int) -> None:
        self.runtime = runtime
        self.interval = interval
        self.max_keys = max_keys
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        next_scan = 0.0
        while True:
            up, _ = await self.runtime.redis_ping()
            metrics.REDIS_UP.set(up)
            metrics.DRAINING.set(self.runtime.draining)
            metrics.INFLIGHT_DELIVERIES.set(self.runtime.delivery.inflight)
            if up and time.monotonic() >= next_scan:
                next_scan = time.monotonic() + self.interval
                await self.refresh()
            await asyncio.sleep(min(PING_INTERVAL, self.interval))

    async def refresh(self) -> None:
        redis = self.runtime.redis
        started = time.perf_counter()
        try:
            sessions = await count_keys(redis, family("sessions").pattern, self.max_keys)
            tasks = await task_summary(redis, max_keys=self.max_keys)
            waiting, oldest_waiting = await waiting_results(redis, self.max_keys)
        except (RedisError, OSError) as exc:
            log.warning(events.KEYSPACE_SCAN_FAILED, error=type(exc).__name__)
            return
        metrics.ACTIVE_SESSIONS.set(sessions)
        metrics.PENDING_TASKS.set(tasks.pending)
        metrics.OLDEST_PENDING_TASK_AGE.set(tasks.oldest_pending_seconds)
        metrics.STUCK_PENDING_TASKS.set(tasks.stuck_pending)
        metrics.RESULTS_WAITING.set(waiting)
        metrics.OLDEST_RESULT_WAITING_AGE.set(oldest_waiting)
        metrics.KEYSPACE_SCAN_DURATION.set(time.perf_counter() - started)
        metrics.KEYSPACE_SCAN_TIMESTAMP.set(time.time())
