"""`elevenlabs:session:{conversationId}`: the live, push-capable session of one browser connection.

Value: a hash, readable with `HGETALL elevenlabs:session:<conversationId>`. Fields: conversationId,
sessionUrl, sessionId, expiresAt, agentSessionId, transport, pushUrl, metadata (JSON), registeredAt,
and, written by tool webhooks, lastTaskId / lastToolCallAt. Lifetime: TTL 10 min, refreshed by every
registration. Registration writes only the fields it carries (HSET, never a whole-value SET), so it
cannot erase what a webhook wrote concurrently.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from elevenlabs_agent.stores import lua
from elevenlabs_agent.stores.batch import Batch
from elevenlabs_agent.stores.keyspace import SCAN_COUNT, Pace, count_keys

KEY_PREFIX = "elevenlabs:session:"
SCAN_PATTERN = KEY_PREFIX + "*"
DEFAULT_TTL = 600
HOLDS = "the live session registration of one browser connection"


def key(conversation_id: str) -> str:
    return KEY_PREFIX + conversation_id


# KEYS[1]; ARGV[1] = ttl, ARGV[2] = number of fields to clear, then their names, then field/value pairs.
# A registration replaces what the browser owns (an absent pushUrl must not leave the previous
# session's bridge in place) but leaves fields written by webhooks (lastTaskId, ...) alone.
_REGISTER = """
local clear = tonumber(ARGV[2])
if clear > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, 3, 2 + clear)) end
redis.call('HSET', KEYS[1], unpack(ARGV, 3 + clear))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
# Fields a registration may carry; any it leaves out are cleared from the previous registration.
REGISTRATION_FIELDS = (
    "conversationId",
    "sessionUrl",
    "sessionId",
    "transport",
    "metadata",
    "registeredAt",
    "pushUrl",
    "agentSessionId",
    "expiresAt",
)


class SessionStore:
    def __init__(self, redis: Redis, ttl: int = DEFAULT_TTL) -> None:
        self.redis = redis
        self.ttl = ttl

    def batch(self) -> Batch:
        return Batch(self.redis)

    def queue_register(self, batch: Batch, conversation_id: str, fields: dict[str, str]) -> None:
        clear = [name for name in REGISTRATION_FIELDS if name not in fields]
        args: list[str | int] = [self.ttl, len(clear), *clear]
        for name, value in fields.items():
            args += [name, value]
        batch.eval(_REGISTER, [key(conversation_id)], args)

    def queue_note_task(self, batch: Batch, conversation_id: str, task_id: str, now: str) -> None:
        """Record the latest tool call on a live session; a no-op when none is live."""
        batch.eval(lua.HSET_IF_EXISTS, [key(conversation_id)], ["lastTaskId", task_id, "lastToolCallAt", now])

    async def get(self, conversation_id: str) -> dict[str, str] | None:
        h = cast(dict[str, str], await self.redis.hgetall(key(conversation_id)))
        return h or None

    async def count(self, max_keys: int | None = None, *, count: int = SCAN_COUNT, pace: Pace | None = None) -> int:
        """Live sessions; with `max_keys`, stops after about that many (a bounded view). `count` keys
        per SCAN, `pace` between batches (stores/keyspace.py)."""
        return await count_keys(self.redis, SCAN_PATTERN, max_keys, count, pace)
