"""Per-conversation result outbox: an event stream and the set of results not yet delivered.

- `elevenlabs:events:{<conversationId>}`: a Redis stream of task updates (`XRANGE <key> - +`); its
  entry ids are the SSE event ids, so a browser resumes with `Last-Event-ID`. Capped (MAXLEN ~).
- `elevenlabs:pending:{<conversationId>}`: a hash taskId -> event JSON (`HGETALL <key>`) of results
  that no channel has confirmed yet; they are offered again to every new subscriber or session.

The braces are literal: they make both keys one Redis Cluster hash slot, so publishing a result
(XADD + HSET) is one atomic script there too. Lifetime: TTL 24 h, refreshed by every publish; the
results also stay in the conversation history for good.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from elevenlabs_agent.stores.batch import Batch
from elevenlabs_agent.stores.keyspace import SCAN_COUNT, Pace, scan_batches

STREAM_PREFIX = "elevenlabs:events:"
PENDING_PREFIX = "elevenlabs:pending:"
STREAM_SCAN_PATTERN = STREAM_PREFIX + "*"
PENDING_SCAN_PATTERN = PENDING_PREFIX + "*"
DEFAULT_TTL = 86_400
DEFAULT_STREAM_MAXLEN = 1_000
STREAM_HOLDS = "task update events of one conversation (SSE ids), capped"
PENDING_HOLDS = "results of one conversation not yet confirmed by any channel"

# KEYS: stream, pending. ARGV: taskId, event json (an object), maxlen, ttl.
# A result already pending is not published again, so a retried publish cannot duplicate it.
PUBLISH = """
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then return cjson.decode(existing)['eventId'] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'taskId', ARGV[1], 'data', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], '{"eventId":"' .. id .. '",' .. string.sub(ARGV[2], 2))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return id
"""


def stream_key(conversation_id: str) -> str:
    return STREAM_PREFIX + "{" + conversation_id + "}"


def pending_key(conversation_id: str) -> str:
    return PENDING_PREFIX + "{" + conversation_id + "}"


def conversation_of(key: str) -> str:
    """The conversation id inside a stream or pending key (between its hash-tag braces)."""
    return key[key.index("{") + 1 : key.rindex("}")]


@dataclass(frozen=True)
class Event:
    """One task update, as sent over SSE: `id` is the stream entry id, `data` the JSON payload."""

    id: str
    task_id: str
    data: dict[str, Any]


def stream_order(event_id: str) -> tuple[int, int]:
    """Sort key of a stream entry id ("<ms>-<seq>")."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class WaitingResults:
    count: int = 0
    oldest_seconds: float = 0.0
    stale_conversations: list[str] = field(default_factory=list)


class Outbox:
    def __init__(
        self,
        redis: Redis,
        blocking_redis: Redis,
        ttl: int = DEFAULT_TTL,
        maxlen: int = DEFAULT_STREAM_MAXLEN,
    ) -> None:
        self.redis = redis
        # XREAD BLOCK holds its connection for the whole wait: keep those off the shared pool.
        self.blocking_redis = blocking_redis
        self.ttl = ttl
        self.maxlen = maxlen

    def queue_publish(self, batch: Batch, conversation_id: str, task_id: str, data: dict[str, Any]) -> None:
        batch.eval(
            PUBLISH,
            [stream_key(conversation_id), pending_key(conversation_id)],
            [task_id, orjson.dumps(data).decode(), self.maxlen, self.ttl],
        )

    async def pending(self, conversation_id: str) -> list[Event]:
        """Undelivered results, oldest first."""
        raw = cast(dict[str, str], await self.redis.hgetall(pending_key(conversation_id)))
        return _pending_events(raw)

    async def snapshot(self, conversation_id: str) -> tuple[list[Event], str]:
        """Pending results and the id of the newest stream entry ("0-0" if none), in one round trip."""
        # MULTI (both keys share a hash slot): a result published between the two reads would be in
        # neither the pending snapshot nor the stream after `newest`, and the subscriber would miss it.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(pending_key(conversation_id))
            pipe.xrevrange(stream_key(conversation_id), count=1)
            raw, newest = await pipe.execute()
        return _pending_events(raw), newest[0][0] if newest else "0-0"

    async def read_after(self, conversation_id: str, after_id: str, count: int = 100) -> list[Event]:
        entries = await self.redis.xrange(stream_key(conversation_id), min="(" + after_id, count=count)
        return [_event(entry_id, fields) for entry_id, fields in cast(list[tuple[str, dict[str, str]]], entries)]

    async def wait_after(self, conversation_id: str, after_id: str, block_ms: int) -> list[Event]:
        """Block until events newer than `after_id` arrive, or `block_ms` passes."""
        reply = await self.blocking_redis.xread({stream_key(conversation_id): after_id}, block=block_ms, count=100)
        if not reply:
            return []
        _, entries = cast(list[tuple[str, list[tuple[str, dict[str, str]]]]], reply)[0]
        return [_event(entry_id, fields) for entry_id, fields in entries]

    async def ack(self, conversation_id: str, task_ids: list[str]) -> list[str]:
        """Drop confirmed results from the pending set; returns the task ids that were pending (a
        resend after a lost answer finds none: the accepted effect written down in redis/mux.py)."""
        key = pending_key(conversation_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hdel(key, task_id)
            removed = await pipe.execute()
        return [t for t, n in zip(task_ids, removed, strict=True) if n]

    async def waiting(
        self,
        *,
        max_keys: int | None = None,
        stale_after: float | None = None,
        max_stale: int = 1000,
        count: int = SCAN_COUNT,
        pace: Pace | None = None,
    ) -> WaitingResults:
        """Results no channel has confirmed yet: how many and the oldest one's age; with
        `stale_after`, also the conversations (at most `max_stale`) whose oldest result has waited
        at least that many seconds. With `max_keys`, stops after about that many keys. `count` keys
        per SCAN, `pace` between batches (stores/keyspace.py).

        A result's age comes from its stream id, whose first part is its publication time in ms.
        """
        waiting, scanned, now_ms = WaitingResults(), 0, time.time() * 1000
        async for keys in scan_batches(self.redis, PENDING_SCAN_PATTERN, count, pace):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hvals(key)
                replies = await pipe.execute()
            for key, values in zip(keys, replies, strict=True):
                waited = (now_ms - min((_event_ms(v) for v in values), default=now_ms)) / 1000
                waiting.count += len(values)
                waiting.oldest_seconds = max(waiting.oldest_seconds, waited)
                stale = stale_after is not None and waited >= stale_after
                if values and stale and len(waiting.stale_conversations) < max_stale:
                    waiting.stale_conversations.append(conversation_of(key))
            scanned += len(keys)
            if max_keys is not None and scanned >= max_keys:
                break
        return waiting


def _event_ms(value: str) -> float:
    event_id = orjson.loads(value).get("eventId", "")
    return float(event_id.partition("-")[0] or 0)


def _pending_events(raw: dict[str, str]) -> list[Event]:
    events = []
    for task_id, value in raw.items():
        data = orjson.loads(value)
        event_id = data.pop("eventId")
        events.append(Event(event_id, task_id, data))
    return sorted(events, key=lambda e: stream_order(e.id))


def _event(entry_id: str, fields: dict[str, str]) -> Event:
    return Event(entry_id, fields["taskId"], orjson.loads(fields["data"]))
