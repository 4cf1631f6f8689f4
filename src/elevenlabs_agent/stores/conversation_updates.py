"""The conversation store's Pub/Sub side: the changes announced on `elevenlabs:conversation-updates`.

The scripts in stores/conversations.py PUBLISH `{"conversationId", "reason"}` there on every change.
`ConversationUpdates.listen` holds one subscription to that channel and turns its messages into
`Change`s. Pub/Sub forgets what it could not deliver, so every time the subscription is
(re)established (the first SUBSCRIBE, or redis-py's own re-subscription after a reconnect) it
yields `RESUBSCRIBED`: whatever was published before may have been missed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from elevenlabs_agent.stores.conversations import UPDATES_CHANNEL


@dataclass(frozen=True, slots=True)
class Change:
    conversation_id: str
    reason: str


class Resubscribed:
    __slots__ = ()


RESUBSCRIBED: Final = Resubscribed()


class ConversationUpdates:
    def __init__(self, redis: Redis) -> None:
        # A connection that may wait indefinitely for the next message (not the request client's).
        self.redis = redis

    async def listen(self) -> AsyncGenerator[Change | Resubscribed]:
        """`RESUBSCRIBED` on each (re)subscription, then the changes as they are announced. Ends
        only by raising (the connection broke for good): the caller decides when to listen again."""
        pubsub = None
        try:
            # A cluster client learns its slot map on its first command; its Pub/Sub needs it.
            await self.redis.ping()
            pubsub = self.redis.pubsub()
            await pubsub.subscribe(UPDATES_CHANNEL)
            async for message in pubsub.listen():
                if message["type"] == "subscribe":
                    yield RESUBSCRIBED
                elif message["type"] == "message" and (change := _change(message["data"])) is not None:
                    yield change
        finally:
            if pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


def _change(data: Any) -> Change | None:
    """A published announcement; None for anything else on the channel."""
    try:
        change = orjson.loads(data)
        conversation_id, reason = change["conversationId"], change["reason"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(conversation_id, str):
        return None
    return Change(conversation_id, str(reason))
