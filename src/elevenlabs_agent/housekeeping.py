"""Background housekeeping: keyspace gauges, and finishing work a crash or outage interrupted.

A scrape must never walk the keyspace, so every `interval` seconds one bounded SCAN pass (at most
`max_keys` keys per family) refreshes the keyspace gauges. The same pass finds work that no process
is doing any more (a restarted or another instance picks it up; nothing lives only in memory):
- results whose callback was stored but whose recording was cut short -> recorded again;
- results waiting for longer than the grace period while a push-capable session is live ->
  pushed again (the relay channel needs nothing: every SSE subscription replays what is pending);
- conversations missing from the listing indexes (stored before an index existed) -> indexed, and on
  Redis Cluster the message counts of recently accessed conversations refreshed.
Redis reachability is checked every few seconds. With several instances each one does this; every
step is idempotent and repeated pushes carry the same context_id, so that is harmless.

Process-level: it drives the services of one `Runtime`, and every scan goes through the store that
owns the key family.
"""

from __future__ import annotations

import asyncio
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


class Housekeeper(BackgroundLoop):
    def __init__(self, runtime: Runtime, interval: float, max_keys: int) -> None:
        self.runtime = runtime
        self.interval = interval
        self.max_keys = max_keys

    async def _run(self) -> None:
        next_pass = 0.0
        while True:
            up, _ = await self.runtime.redis_ping()
            metrics.REDIS_UP.set(up)
            metrics.DRAINING.set(self.runtime.draining)
            metrics.INFLIGHT_DELIVERIES.set(self.runtime.delivery.inflight)
            if not self.runtime.draining and time.monotonic() >= next_pass:
                next_pass = time.monotonic() + self.interval
                if up:
                    await self.run_pass()
                else:
                    log.warning(events.HOUSEKEEPING_FAILED, error="redis unreachable")
            await asyncio.sleep(min(PING_INTERVAL, self.interval))

    async def run_pass(self) -> None:
        stores = self.runtime.stores
        started = time.perf_counter()
        try:
            sessions = await stores.sessions.count(self.max_keys)
            tasks = await stores.tasks.summary(
                max_keys=self.max_keys, unrecorded_after=RECOVERY_GRACE, max_unrecorded=MAX_RECOVERY_BATCH
            )
            waiting = await stores.outbox.waiting(
                max_keys=self.max_keys, stale_after=RECOVERY_GRACE, max_stale=MAX_RECOVERY_BATCH
            )
            if tasks.unrecorded:
                await self.runtime.callbacks.repair(tasks.unrecorded)
            for conversation_id in waiting.stale_conversations:
                self.runtime.delivery.spawn(self.runtime.delivery.redeliver(conversation_id))
            indexed = await stores.conversations.repair_indexes(self.max_keys)
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
