"""`elevenlabs:conversation:{conversationId}`: the agent conversation and its messages (persistent).

Value: a hash, readable with `HGETALL elevenlabs:conversation:<id>`. Fields: conversationId,
createdAt, lastAccessedAt, agentId, metadata (JSON), seq (message counter), `msg:NNNNNN` (one
AgentMessage as JSON each, in order), `task:<taskId>` (the msg field holding that task's tool
message, so a result replaces its pending message instead of adding a second one) and `appends`
(the ids of the latest client appends, so an append resent after a dropped connection is stored
once). A hash rather than one JSON string lets Lua append and replace messages atomically without
re-encoding JSON.

Three sorted sets of conversation ids make every listing order one range read (ZRANGE/ZREVRANGE):
`elevenlabs:conversations` scored by createdAt (ms), `elevenlabs:conversations:by-last-accessed` by
lastAccessedAt (ms) and `elevenlabs:conversations:by-message-count` by the number of messages (ties
in id order). On one server (or Sentinel) the scripts that write a conversation update all three in
the same atomic step. On Redis Cluster a script may only touch its own key's slot: the createdAt and
lastAccessedAt scores of a message are written right after its script, best effort (`_index_write`:
an index's master being down must not fail the write), and the message counts of recently accessed
conversations are refreshed by housekeeping (`repair_indexes`), which also backfills conversations
stored before the secondary indexes existed. All persistent: conversations are the history.

Every change to a conversation is announced on the Pub/Sub channel `elevenlabs:conversation-updates`
(`{"conversationId", "reason"}`), from inside the script that made it, so a subscriber that reads the
conversation on that message sees the change (services/live.py fans it out to WebSocket clients).
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from elevenlabs_agent.redis.clients import is_cluster
from elevenlabs_agent.stores import lua
from elevenlabs_agent.stores.batch import Batch, Queue, Reply
from elevenlabs_agent.stores.conversation_scripts import create_script, upsert_message_script
from elevenlabs_agent.stores.keyspace import Pace, zscan_members
from elevenlabs_agent.timeutil import ms_of

KEY_PREFIX = "elevenlabs:conversation:"
SCAN_PATTERN = KEY_PREFIX + "*"
INDEX_KEY = "elevenlabs:conversations"
ACCESSED_INDEX_KEY = "elevenlabs:conversations:by-last-accessed"
COUNT_INDEX_KEY = "elevenlabs:conversations:by-message-count"
UPDATES_CHANNEL = "elevenlabs:conversation-updates"
HOLDS = "one conversation: metadata fields and msg:NNNNNN message fields"
INDEX_HOLDS = "conversation ids scored by createdAt (ms), for newest-first listing"
ACCESSED_INDEX_HOLDS = "conversation ids scored by lastAccessedAt (ms), for sortBy=lastAccessedAt"
COUNT_INDEX_HOLDS = "conversation ids scored by message count, for sortBy=messageCount"
DEFAULT_MAX_MESSAGES = 10_000

# sortBy value -> the index that orders by it
SORT_INDEXES = {"createdAt": INDEX_KEY, "lastAccessedAt": ACCESSED_INDEX_KEY, "messageCount": COUNT_INDEX_KEY}
INDEX_KEYS = (INDEX_KEY, ACCESSED_INDEX_KEY, COUNT_INDEX_KEY)

_CREATE = create_script(UPDATES_CHANNEL)
_UPSERT_MESSAGE = upsert_message_script(UPDATES_CHANNEL)


# Module-level aliases: inside ConversationStore, `list` names its method.
Ids = list[str]
Scores = list[tuple[int | None, int]]
# What a queued upsert did: the message is stored, the conversation is full, or it does not exist
# (and was not to be created).
Upserted = Literal["stored", "full", "missing"]


def _upserted(field: str | None) -> Upserted:
    if field is None:
        return "missing"
    return "stored" if field else "full"


def _cluster_index(conversation_id: str, ms: int, *, created: bool) -> list[Queue]:
    """Cluster only: the index scores known before the script runs; message counts come from
    `repair_indexes`."""
    if created:
        return [
            lambda pipe: pipe.zadd(INDEX_KEY, {conversation_id: ms}, nx=True),
            lambda pipe: pipe.zadd(ACCESSED_INDEX_KEY, {conversation_id: ms}, gt=True),
            lambda pipe: pipe.zadd(COUNT_INDEX_KEY, {conversation_id: 0}, nx=True),
        ]
    # XX: a write to a conversation that does not exist must not put its id in an index.
    return [lambda pipe: pipe.zadd(ACCESSED_INDEX_KEY, {conversation_id: ms}, xx=True, gt=True)]


class ConversationFull(Exception):
    """The conversation holds the maximum number of messages."""


def key(conversation_id: str) -> str:
    return KEY_PREFIX + conversation_id


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    created_at: str
    last_accessed_at: str
    messages: list[dict[str, Any]]
    agent_id: str | None
    metadata: dict[str, Any]

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Conversation:
        fields = sorted(f for f in h if f.startswith("msg:"))
        return cls(
            conversation_id=h.get("conversationId", ""),
            created_at=h.get("createdAt", ""),
            last_accessed_at=h.get("lastAccessedAt") or h.get("createdAt", ""),
            messages=[orjson.loads(h[f]) for f in fields],
            agent_id=h.get("agentId"),
            metadata=orjson.loads(h.get("metadata") or "{}"),
        )

    def to_public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "conversationId": self.conversation_id,
            "messages": self.messages,
            "createdAt": self.created_at,
            "lastAccessedAt": self.last_accessed_at,
            "metadata": self.metadata,
        }
        if self.agent_id:
            out["agentId"] = self.agent_id
        return out


def score_ms(iso: str) -> int:
    """A listing-index score: the time in ms."""
    return ms_of(iso)


def _announcement(conversation_id: str, reason: str) -> str:
    return orjson.dumps({"conversationId": conversation_id, "reason": reason}).decode()


@functools.cache
def announcement_around(reason: str) -> tuple[str, str]:
    """`_announcement` in two parts around its conversationId, which the one-step scripts write in
    (`lua.around`); made once per reason, as there are only a few."""
    return lua.around({"conversationId": "", "reason": reason}, "conversationId")


class ConversationStore:
    def __init__(self, redis: Redis, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.redis = redis
        self.max_messages = max_messages
        # Cluster: scripts touch only the conversation's own key (see the module docstring).
        self.cluster = is_cluster(redis)

    def _keys(self, conversation_id: str) -> list[str]:
        return [key(conversation_id)] if self.cluster else [key(conversation_id), *INDEX_KEYS]

    def batch(self) -> Batch:
        return Batch(self.redis)

    async def create(self, conversation_id: str, *, now: str, agent_id: str | None, metadata: dict[str, Any]) -> bool:
        """Create a conversation; False if one with this id already exists (it is left untouched)."""
        ms = score_ms(now)
        batch = self.batch()
        created = batch.eval(
            _CREATE,
            self._keys(conversation_id),
            [
                now,
                conversation_id,
                agent_id or "",
                orjson.dumps(metadata).decode(),
                ms,
                _announcement(conversation_id, "created"),
            ],
        )
        if self.cluster:

            async def index() -> None:
                # Only a conversation this call created: a 409 must leave its lastAccessed alone.
                if created.value:
                    await self._index_write(conversation_id, ms, created=True)

            batch.after(index)
        await batch.run()
        return bool(created.value)

    def queue_upsert_message(
        self,
        batch: Batch,
        conversation_id: str,
        message: dict[str, Any],
        *,
        now: str,
        reason: str,
        task_id: str | None = None,
        create: bool = False,
        capped: bool = True,
        append_id: str = "",
    ) -> Reply[Upserted]:
        """Queue appending `message` (or replacing the one of `task_id`); subscribers learn it as `reason`.

        With `create`, a missing conversation is created (and indexed) on the fly: a tool webhook may
        name a conversation the browser never created here, and its result must still be kept.
        """
        ms = score_ms(now)
        keys = self._keys(conversation_id)
        args: list[str | int] = [
            now,
            conversation_id,
            orjson.dumps(message).decode(),
            task_id or "",
            self.max_messages if capped else 0,
            "1" if create else "0",
            ms,
            _announcement(conversation_id, reason),
            append_id,
        ]
        written = batch.add(lambda pipe: pipe.eval(_UPSERT_MESSAGE, len(keys), *keys, *args), _upserted)
        if self.cluster:

            async def index() -> None:
                if written.value == "stored":
                    await self._index_write(conversation_id, ms, created=create)

            batch.after(index)
        return written

    async def _index_write(self, conversation_id: str, ms: int, *, created: bool) -> None:
        """Cluster only, once an upsert ran: the listing-index scores its script could not write
        (they live in other slots). Best effort, so that derived data never fails the write it
        follows (a result recorded on one master while the master of an index is down); housekeeping
        (`repair_indexes`) and the next write of the conversation bring the indexes back."""
        with contextlib.suppress(RedisError, OSError):
            batch = self.batch()
            for queue in _cluster_index(conversation_id, ms, created=created):
                batch.add(queue)
            await batch.run()

    async def announce(self, conversation_id: str, reason: str) -> bool:
        """Tell subscribers the conversation changed in a way its hash does not show (a delivery).
        Best effort, like every Pub/Sub message: the change it announces is stored already, and on a
        cluster PUBLISH goes to one node that may be the one down. False if it was not sent."""
        try:
            await self.redis.publish(UPDATES_CHANNEL, _announcement(conversation_id, reason))
        except (RedisError, OSError):
            return False
        return True

    async def append_message(self, conversation_id: str, message: dict[str, Any], now: str) -> bool:
        """Append a client message; False if the conversation does not exist. Stored once even if a
        dropped connection makes the client resend it (its id is remembered by the script)."""
        batch = self.batch()
        written = self.queue_upsert_message(
            batch, conversation_id, message, now=now, reason="message", append_id=uuid.uuid4().hex
        )
        await batch.run()
        if written.value == "full":
            raise ConversationFull(conversation_id)
        return written.value == "stored"

    async def exists(self, conversation_id: str) -> bool:
        return bool(await self.redis.exists(key(conversation_id)))

    async def get(self, conversation_id: str) -> Conversation | None:
        h = cast(dict[str, str], await self.redis.hgetall(key(conversation_id)))
        return Conversation.from_hash(h) if h else None

    async def list(
        self, *, offset: int, limit: int, sort_by: str = "createdAt", descending: bool = True
    ) -> tuple[list[Conversation], int]:
        """A page of conversations in the order of `sort_by` (a SORT_INDEXES key), and the total count."""
        index = SORT_INDEXES[sort_by]
        async with self.redis.pipeline(transaction=False) as pipe:
            if descending:
                pipe.zrevrange(index, offset, offset + limit - 1)
            else:
                pipe.zrange(index, offset, offset + limit - 1)
            pipe.zcard(index)
            ids, total = await pipe.execute()
        if not ids:
            return [], total
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation_id in ids:
                pipe.hgetall(key(conversation_id))
            hashes = await pipe.execute()
        return [Conversation.from_hash(h) for h in hashes if h], total

    async def repair_indexes(self, max_keys: int, batch: int = 500, pace: Pace | None = None) -> int:
        """Backfill the secondary indexes from the createdAt index (conversations stored before they
        existed, or a write cut short between pipeline steps on Cluster); on Cluster also refresh the
        message counts of the `max_keys` most recently accessed conversations. Bounded by `max_keys`,
        `batch` conversations at a time, `pace` awaited between batches (stores/keyspace.py).
        Returns how many index entries were added or changed."""
        changed = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for index in INDEX_KEYS:
                pipe.zcard(index)
            sizes = await pipe.execute()
        if min(sizes[1:]) < sizes[0]:
            changed += await self._backfill(max_keys, batch, pace)
        if self.cluster:
            changed += await self._refresh_counts(max_keys, batch, pace)
        return changed

    async def _backfill(self, max_keys: int, batch: int, pace: Pace | None) -> int:
        added = 0
        seen = 0
        async for ids in zscan_members(self.redis, INDEX_KEY, batch, pace):
            hashes = await self._scores(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for conversation_id, (accessed_ms, count) in zip(ids, hashes, strict=True):
                    if accessed_ms is None:
                        continue
                    # NX: an entry a live write made meanwhile is newer than what was read here.
                    pipe.zadd(ACCESSED_INDEX_KEY, {conversation_id: accessed_ms}, nx=True)
                    pipe.zadd(COUNT_INDEX_KEY, {conversation_id: count}, nx=True)
                added += sum(await pipe.execute())
            seen += len(ids)
            if seen >= max_keys:
                break
        return added

    async def _refresh_counts(self, max_keys: int, batch: int, pace: Pace | None) -> int:
        changed = 0
        for start in range(0, max_keys, batch):
            ids = cast(Ids, await self.redis.zrevrange(ACCESSED_INDEX_KEY, start, start + batch - 1))
            if not ids:
                break
            scores = await self._scores(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for conversation_id, (accessed_ms, count) in zip(ids, scores, strict=True):
                    if accessed_ms is not None:
                        pipe.zadd(COUNT_INDEX_KEY, {conversation_id: count}, gt=True, ch=True)
                changed += sum(await pipe.execute())
            if pace is not None:
                await pace()
        return changed

    async def _scores(self, ids: Ids) -> Scores:
        """(lastAccessedAt ms, message count) of each conversation; None for one that is gone."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation_id in ids:
                pipe.hmget(key(conversation_id), "createdAt", "lastAccessedAt", "seq")
            rows = await pipe.execute()
        out: Scores = []
        for created, accessed, seq in rows:
            out.append((score_ms(accessed or created) if created else None, int(seq or 0)))
        return out
