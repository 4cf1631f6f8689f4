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

The subscription is held only while the instance has sockets, and IDLE_SECONDS after the last one
closed: an instance without sockets would otherwise receive and parse every change of every
conversation, about 3 % of its CPU on the webhook routes and a loop wake-up per tool call (py-spy,
issue 16). A new socket waits for the subscription (at most SUBSCRIBE_WAIT_SECONDS) before it reads
its snapshot, so the RESUBSCRIBED of a subscription it started resyncs only sockets that were
there before.
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
# How long the subscription outlives the instance's last socket (a reloading page reconnects in less).
IDLE_SECONDS = 30.0
# How long a new socket waits for the subscription before reading its snapshot anyway (a `resync`
# follows once it is up).
SUBSCRIBE_WAIT_SECONDS = 2.0


def frame(kind: str, conversation_id: str, **fields: Any) -> str:
    return orjson.dumps({"type": kind, "conversationId": conversation_id, **fields}).decode()


def conversation_frame(kind: str, conversation: Conversation, reason: str | None = None) -> str:
    extra = {"reason": reason} if reason else {}
    return frame(kind, conversation.conversation_id, conversation=conversation.to_public(), **extra)


class Subscriber:
    """One socket's mailbox: frames to send, oldest first (None: close). A list and, only while the
    socket waits, a future: an idle socket holds no queue, task or buffer of its own here."""

    __slots__ = ("_waiter", "closing", "conversation_id", "frames", "snapshot_read")

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.frames: list[str | None] = []
        self.closing = False
        self._waiter: asyncio.Future[None] | None = None
        self.snapshot_read = False  # a re-subscription resyncs only sockets that read theirs before

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
        self._task: asyncio.Task[None] | None = None  # the subscription, while there are sockets
        self._idle: asyncio.TimerHandle | None = None  # ends the subscription once idle long enough
        self._ending: set[asyncio.Task[None]] = set()  # subscriptions cancelled, still closing
        self._started = False
        self._closing = False
        self._up = asyncio.Event()  # set while the subscription is established

    @property
    def count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    # lifetime ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """From now on a socket's arrival subscribes (the app's startup)."""
        self._started = True

    async def stop(self) -> None:
        self._started = False
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        for task in [self._task, *self._ending, *self._reading.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RedisError):
                    await task
        self._task = None

    @property
    def listening(self) -> bool:
        """Whether this instance holds (or is establishing) its subscription."""
        return self._task is not None

    def _listen_while_needed(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._task is None and self._started:
            self._task = asyncio.create_task(self._listen())

    def _end_when_idle(self) -> None:
        if self._task is not None and self._idle is None and not self._subscribers:
            self._idle = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._end_listening)

    def _end_listening(self) -> None:
        self._idle = None
        if self._task is None or self._subscribers:
            return
        task, self._task = self._task, None
        self._up.clear()
        task.cancel()
        # Held until it has closed its connection: the loop keeps only a weak reference to a task.
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

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
        self._listen_while_needed()
        if self._closing:
            subscriber.closing = True
            subscriber.offer(None)
        return subscriber

    async def before_snapshot(self, subscriber: Subscriber) -> None:
        """Wait (at most SUBSCRIBE_WAIT_SECONDS) until the subscription is up, then note that the
        snapshot is read under it: a change after that read is announced to this socket, and only a
        later re-subscription needs to resync it."""
        if not self._up.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUBSCRIBE_WAIT_SECONDS):
                    await self._up.wait()
        subscriber.snapshot_read = True

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(subscriber.conversation_id)
        if subscribers is None or subscriber not in subscribers:
            return
        subscribers.discard(subscriber)
        metrics.WEBSOCKET_SUBSCRIBERS.dec()
        if not subscribers:
            del self._subscribers[subscriber.conversation_id]
            self._end_when_idle()

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
            self._up.clear()
            await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
            attempt += 1

    def _on_update(self, update: Change | Resubscribed) -> None:
        if not isinstance(update, Change):
            # RESUBSCRIBED: anything published while we were not subscribed is lost, so every local
            # conversation with a snapshot read before now is read again (a socket still waiting in
            # `before_snapshot` reads its snapshot after this).
            self._up.set()
            for conversation_id, subscribers in list(self._subscribers.items()):
                if any(s.snapshot_read for s in subscribers):
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
