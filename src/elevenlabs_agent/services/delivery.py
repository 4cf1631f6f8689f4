"""Delivery of results into the live conversation (SPEC §5), at least once, keyed by task id.

A result is published to the conversation's outbox before the callback is acknowledged. From there:
- relay: SSE subscribers read the outbox stream; the browser forwards each event with
  `sendContextualUpdate` and acknowledges it, which removes it from the pending set;
- websocket: when the live session registered a `pushUrl`, we push a `contextual_update` frame there
  and the accepted frame removes it from the pending set.
Unconfirmed results stay pending and are offered again to every new subscriber or registration, so a
crash, an expired session or a lost socket delays a result but never drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from redis.exceptions import RedisError

from elevenlabs_agent import events, metrics
from elevenlabs_agent.clients.elevenlabs import push_contextual_update
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.stores.conversations import ConversationStore
from elevenlabs_agent.stores.outbox import Event, Outbox, stream_order
from elevenlabs_agent.stores.sessions import SessionStore
from elevenlabs_agent.stores.tasks import TaskStore
from elevenlabs_agent.timeutil import now_iso

log = get_logger()


class DeliveryService:
    def __init__(
        self,
        outbox: Outbox,
        sessions: SessionStore,
        tasks: TaskStore,
        conversations: ConversationStore,
        push_timeout: float,
        keepalive_seconds: float,
    ) -> None:
        self.outbox = outbox
        self.sessions = sessions
        self.tasks = tasks
        self.conversations = conversations
        self.push_timeout = push_timeout
        self.keepalive_ms = int(keepalive_seconds * 1000)
        self._inflight: set[asyncio.Task[None]] = set()
        # conversation id -> task ids whose push is queued but not started (`deliver_to`)
        self._batches: dict[str, list[str]] = {}
        self._closing = asyncio.Event()

    # background work ------------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run delivery after the response; tracked so shutdown can wait for it."""
        task = asyncio.create_task(_logging_redis_errors(work))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def close_streams(self) -> None:
        """End every SSE subscription now (browsers reconnect, to another instance when we drain)."""
        self._closing.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight deliveries; True if all finished in time."""
        if not self._inflight:
            return True
        _, pending = await asyncio.wait(set(self._inflight), timeout=timeout)
        return not pending

    # delivery ---------------------------------------------------------------------------------------

    async def deliver(self, conversation_id: str, task_id: str) -> None:
        """Deliver one freshly published result to the conversation's live session, if any."""
        session = await self.sessions.get(conversation_id)
        push_url = self._route(conversation_id, task_id, None if session is None else session.get("pushUrl", ""))
        if push_url:
            await self._push_published(conversation_id, push_url, [task_id])

    def deliver_to(self, conversation_id: str, task_id: str, push_url: str | None) -> None:
        """`deliver` with the live session already known (None: none, '': a relay session). Only a push
        needs more work: results of one conversation published during the same event-loop turn go in one
        background task that reads the outbox once."""
        push_url = self._route(conversation_id, task_id, push_url)
        if not push_url:
            return
        queued = self._batches.get(conversation_id)
        if queued is not None:
            queued.append(task_id)
            return
        self._batches[conversation_id] = [task_id]
        self.spawn(self._push_batch(conversation_id, push_url))

    def _route(self, conversation_id: str, task_id: str, push_url: str | None) -> str | None:
        """The URL to push a new result to; None when the session is missing or reads the relay."""
        if push_url is None:
            log.info(events.SESSION_MISSING, conversationId=conversation_id, taskId=task_id)
            metrics.labelled(metrics.DELIVERIES, "none", "waiting").inc()
            return None
        if not push_url:
            metrics.labelled(metrics.DELIVERIES, "relay", "published").inc()
            return None
        return push_url

    async def _push_batch(self, conversation_id: str, push_url: str) -> None:
        await self._push_published(conversation_id, push_url, self._batches.pop(conversation_id))

    async def _push_published(self, conversation_id: str, push_url: str, task_ids: list[str]) -> None:
        wanted = set(task_ids)
        for event in await self.outbox.pending(conversation_id):
            if event.task_id in wanted:
                await self._push(conversation_id, push_url, event)

    async def redeliver(self, conversation_id: str) -> None:
        """Offer a conversation's waiting results again to its live push-capable session, if any."""
        session = await self.sessions.get(conversation_id)
        if session is not None and session.get("pushUrl"):
            await self.replay(conversation_id, session["pushUrl"])

    async def replay(self, conversation_id: str, push_url: str) -> None:
        """Push every pending result to a newly registered push-capable session, oldest first."""
        for event in await self.outbox.pending(conversation_id):
            log.info(events.DELIVERY_REPLAYED, conversationId=conversation_id, taskId=event.task_id)
            if not await self._push(conversation_id, push_url, event):
                return

    async def _push(self, conversation_id: str, push_url: str, event: Event) -> bool:
        try:
            await push_contextual_update(push_url, event.data["text"], event.task_id, self.push_timeout)
        except Exception as exc:  # any failure leaves the result pending for the next session
            log.warning(
                events.DELIVERY_PUSH_FAILED,
                conversationId=conversation_id,
                taskId=event.task_id,
                error=type(exc).__name__,
            )
            metrics.DELIVERIES.labels("websocket", "failed").inc()
            return False
        await self.confirm(conversation_id, [event.task_id], via="websocket")
        log.info(events.DELIVERY_PUSHED, conversationId=conversation_id, taskId=event.task_id)
        metrics.DELIVERIES.labels("websocket", "delivered").inc()
        return True

    async def confirm(self, conversation_id: str, task_ids: list[str], via: str) -> list[str]:
        """A channel confirmed these results: mark their tasks delivered, then drop them from pending.

        In that order, in two round trips: if Redis fails in between, the result is still pending,
        so the channel's retry (or the next replay) marks it again and removes it. The other order
        could leave a delivered result marked pending forever."""
        now = now_iso()
        batch = self.tasks.batch()
        for task_id in task_ids:
            self.tasks.queue_mark_delivered(batch, task_id, conversation_id, via, now)
        await batch.run()
        removed = await self.outbox.ack(conversation_id, task_ids)
        if removed:
            # The conversation's hash does not change, but its page shows delivery: tell live subscribers.
            await self.conversations.announce(conversation_id, "delivered")
        return removed

    async def acknowledge(self, conversation_id: str, task_ids: list[str]) -> list[str]:
        """The browser forwarded these relayed results into its ElevenLabs session."""
        removed = await self.confirm(conversation_id, task_ids, via="relay")
        for task_id in removed:
            log.info(events.DELIVERY_ACKNOWLEDGED, conversationId=conversation_id, taskId=task_id)
            metrics.DELIVERIES.labels("relay", "delivered").inc()
        return removed

    # relay (SSE) ------------------------------------------------------------------------------------

    async def subscribe(self, conversation_id: str, last_event_id: str | None) -> AsyncIterator[Event | None]:
        """Events for one SSE subscriber; None means "nothing for a while", i.e. send a keep-alive.

        Without `last_event_id`: every pending result, then live events. With it: pending results the
        client saw but never acknowledged, then everything after `last_event_id`, then live events.
        """
        pending, newest = await self.outbox.snapshot(conversation_id)
        if last_event_id is None:
            cursor = newest
            for event in pending:
                yield event
        else:
            cursor = last_event_id
            for event in pending:
                if stream_order(event.id) <= stream_order(last_event_id):
                    yield event
            while True:
                backlog = await self.outbox.read_after(conversation_id, cursor)
                for event in backlog:
                    yield event
                    cursor = event.id
                if len(backlog) < 100:
                    break
        while not self._closing.is_set():
            batch = await self._wait_unless_closing(conversation_id, cursor)
            if batch is None:
                return
            if not batch:
                yield None
            for event in batch:
                yield event
                cursor = event.id

    async def _wait_unless_closing(self, conversation_id: str, cursor: str) -> list[Event] | None:
        """New events after `cursor` ([] on keep-alive timeout), or None once streams are closing."""
        read = asyncio.ensure_future(self.outbox.wait_after(conversation_id, cursor, self.keepalive_ms))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({read, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await read
            return None
        return read.result()


async def _logging_redis_errors(work: Coroutine[Any, Any, None]) -> None:
    """A delivery that loses Redis halfway leaves its result pending (offered again on the next
    registration or by housekeeping): say so with the usual event, not an unretrieved task error."""
    try:
        await work
    except (RedisError, OSError) as exc:
        log.error(events.REDIS_UNAVAILABLE, path="delivery", error=type(exc).__name__)
