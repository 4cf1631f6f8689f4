"""Live conversation updates for WebSocket subscribers (SPEC §3.1), across every instance.

Every script that changes a conversation PUBLISHes `{"conversationId", "reason"}` on one Redis
channel (stores/conversations.py), whichever instance ran it. Each instance holds ONE subscription
to that channel (stores/conversation_updates.py) and fans a change out to the sockets it holds for
that conversation: thousands of idle sockets cost no Redis connection each, and an idle socket is
only its entry in a dict.

On a change, the conversation is read once per instance (not once per socket) and the same frame
goes to each of its sockets. Changes that arrive while that read is in flight are folded into one
more read, so a burst costs at most two reads and every socket ends on the newest state.

Pub/Sub forgets what it could not deliver: whenever the subscription is (re)established (Redis
restarted, the connection dropped: the store yields RESUBSCRIBED), every conversation with local
sockets is read again and sent as an update with reason `resync`, so nothing a socket missed stays
missing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from redis.exceptions import RedisError

from elevenlabs_agent import events, metrics
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.stores.conversation_updates import Change, ConversationUpdates, Resubscribed
from elevenlabs_agent.stores.conversations import Conversation, ConversationStore

log = get_logger()

SNAPSHOT = "agent_conversation.snapshot"
UPDATED = "agent_conversation.updated"
ERROR = "error"
# A client slower than this many frames only needs the newest state: older frames are dropped.
QUEUE_FRAMES = 8
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0)


def frame(kind: str, conversation_id: str, **fields: Any) -> str:
    return orjson.dumps({"type": kind, "conversationId": conversation_id, **fields}).decode()


def conversation_frame(kind: str, conversation: Conversation, reason: str | None = None) -> str:
    extra = {"reason": reason} if reason else {}
    return frame(kind, conversation.conversation_id, conversation=conversation.to_public(), **extra)


class Subscriber:
    """One socket's mailbox: frames to send, oldest first (None: close). A list and, only while the
    socket waits, a future: an idle socket holds no queue, task or buffer of its own here."""

    __slots__ = ("_waiter", "closing", "conversation_id", "frames")

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.frames: list[str | None] = []
        self.closing = False
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, text: str | None) -> None:
        """Queue a frame. Never blocks the fan-out: a full mailbox loses its oldest frame, which the
        newer one supersedes (every frame carries the whole conversation). Once the close is queued
        nothing follows it, so it can never be the frame that is dropped."""
        if self.closing and text is not None:
            return
        if len(self.frames) >= QUEUE_FRAMES:
            del self.frames[0]
            metrics.WEBSOCKET_FRAMES_DROPPED.inc()
        self.frames.append(text)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def ready(self) -> asyncio.Future[None]:
        """A future done once a frame is queued (at once if one is)."""
        self._waiter = asyncio.get_running_loop().create_future()
        if self.frames:
            self._waiter.set_result(None)
        return self._waiter


class LiveUpdates:
    def __init__(self, conversations: ConversationStore, updates: ConversationUpdates) -> None:
        self.conversations = conversations
        self.updates = updates
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._dirty: dict[str, str] = {}  # conversation id -> reason of its latest unsent change
        self._reading: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    # lifetime ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        for task in [self._task, *self._reading.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RedisError):
                    await task
        self._task = None

    async def close_all(self, timeout: float) -> None:
        """Ask every socket to close (code 1001: browsers reconnect elsewhere) and wait, at most
        `timeout`, until they have. A socket that connects after this is closed the same way."""
        self._closing = True
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                subscriber.closing = True
                subscriber.offer(None)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._subscribers:
                    await asyncio.sleep(0.02)

    # sockets ----------------------------------------------------------------------------------------

    def subscribe(self, conversation_id: str) -> Subscriber:
        """Register before reading the snapshot, so a change made in between is not missed."""
        subscriber = Subscriber(conversation_id)
        self._subscribers.setdefault(conversation_id, set()).add(subscriber)
        metrics.WEBSOCKET_SUBSCRIBERS.inc()
        if self._closing:
            subscriber.closing = True
            subscriber.offer(None)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(subscriber.conversation_id)
        if subscribers is None or subscriber not in subscribers:
            return
        subscribers.discard(subscriber)
        metrics.WEBSOCKET_SUBSCRIBERS.dec()
        if not subscribers:
            del self._subscribers[subscriber.conversation_id]

    # fan-out ----------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        attempt = 0
        while True:
            try:
                async with contextlib.aclosing(self.updates.listen()) as updates:
                    async for update in updates:
                        attempt = 0
                        self._on_update(update)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever broke, this loop must outlive it and resubscribe
                log.warning(events.LIVE_SUBSCRIPTION_LOST, error=type(exc).__name__, sockets=self.count)
            await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
            attempt += 1

    def _on_update(self, update: Change | Resubscribed) -> None:
        if not isinstance(update, Change):
            # RESUBSCRIBED: anything published while we were not subscribed is lost, so every
            # local conversation is re-read.
            for conversation_id in list(self._subscribers):
                self._changed(conversation_id, "resync")
            return
        if update.conversation_id in self._subscribers:
            self._changed(update.conversation_id, update.reason)

    def _changed(self, conversation_id: str, reason: str) -> None:
        self._dirty[conversation_id] = reason
        if conversation_id not in self._reading:
            self._reading[conversation_id] = asyncio.create_task(self._send_newest(conversation_id))

    async def _send_newest(self, conversation_id: str) -> None:
        try:
            await self._send_while_dirty(conversation_id)
        finally:
            # In the same step as the last look at `_dirty`: a change noted after it starts a new read.
            self._reading.pop(conversation_id, None)

    async def _send_while_dirty(self, conversation_id: str) -> None:
        while (reason := self._dirty.pop(conversation_id, None)) is not None:
            if conversation_id not in self._subscribers:
                return
            try:
                conversation = await self.conversations.get(conversation_id)
            except (RedisError, OSError) as exc:
                # The resync after Redis comes back sends the newest state.
                log.warning(events.REDIS_UNAVAILABLE, path="live-updates", error=type(exc).__name__)
                return
            if conversation is None:
                text = frame(ERROR, conversation_id, error="conversation not found")
                kind = ERROR
            else:
                text = conversation_frame(UPDATED, conversation, reason)
                kind = UPDATED
            for subscriber in self._subscribers.get(conversation_id, ()):
                subscriber.offer(text)
                metrics.WEBSOCKET_FRAMES.labels(kind).inc()
