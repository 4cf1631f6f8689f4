"""`elevenlabs:conversation:{conversationId}`: the agent conversation and its messages (persistent).

Value: a hash, readable with `HGETALL elevenlabs:conversation:<id>`. Fields: conversationId,
createdAt, lastAccessedAt, agentId, metadata (JSON), seq (message counter), `msg:NNNNNN` (one
AgentMessage as JSON each, in order) and `task:<taskId>` (the msg field holding that task's tool
message, so a result replaces its pending message instead of adding a second one). A hash rather
than one JSON string lets Lua append and replace messages atomically without re-encoding JSON.

`elevenlabs:conversations` is a sorted set of conversation ids scored by creation time (ms), the
index behind the newest-first listing. Both are persistent: conversations are the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from elevenlabs_agent.stores import lua
from elevenlabs_agent.timeutil import parse_iso

KEY_PREFIX = "elevenlabs:conversation:"
SCAN_PATTERN = KEY_PREFIX + "*"
INDEX_KEY = "elevenlabs:conversations"
HOLDS = "one conversation: metadata fields and msg:NNNNNN message fields"
INDEX_HOLDS = "conversation ids scored by createdAt (ms), for newest-first listing"
DEFAULT_MAX_MESSAGES = 10_000

# KEYS[1]; ARGV: now, conversationId, agentId, metadata json. Returns 1 if created, 0 if it existed.
_CREATE = """
if redis.call('HSETNX', KEYS[1], 'createdAt', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'conversationId', ARGV[2], 'lastAccessedAt', ARGV[1], 'metadata', ARGV[4], 'seq', 0)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'agentId', ARGV[3]) end
return 1
"""

# KEYS[1]; ARGV: now, conversationId, message json, taskId or '', max messages (0 = no cap),
# create-if-missing ('1'/'0'). Returns the msg field written, '' when the conversation is full,
# or false when it does not exist and may not be created.
_UPSERT_MESSAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[6] ~= '1' then return false end
  redis.call('HSET', KEYS[1], 'conversationId', ARGV[2], 'createdAt', ARGV[1], 'metadata', '{}', 'seq', 0)
end
if ARGV[4] ~= '' then
  local existing = redis.call('HGET', KEYS[1], 'task:' .. ARGV[4])
  if existing then
    redis.call('HSET', KEYS[1], existing, ARGV[3], 'lastAccessedAt', ARGV[1])
    return existing
  end
end
local max = tonumber(ARGV[5])
if max > 0 and tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') >= max then return '' end
local field = string.format('msg:%06d', redis.call('HINCRBY', KEYS[1], 'seq', 1))
redis.call('HSET', KEYS[1], field, ARGV[3], 'lastAccessedAt', ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'task:' .. ARGV[4], field) end
return field
"""


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


def _score(iso: str) -> int:
    return int(parse_iso(iso).timestamp() * 1000)


class ConversationStore:
    def __init__(self, redis: Redis, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.redis = redis
        self.max_messages = max_messages

    async def create(self, conversation_id: str, *, now: str, agent_id: str | None, metadata: dict[str, Any]) -> bool:
        """Create a conversation; False if one with this id already exists (it is left untouched)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            lua.queue_eval(
                pipe,
                _CREATE,
                [key(conversation_id)],
                [now, conversation_id, agent_id or "", orjson.dumps(metadata).decode()],
            )
            pipe.zadd(INDEX_KEY, {conversation_id: _score(now)}, nx=True)
            created, _ = await pipe.execute()
        return bool(created)

    def queue_upsert_message(
        self,
        pipe: Pipeline,
        conversation_id: str,
        message: dict[str, Any],
        *,
        now: str,
        task_id: str | None = None,
        create: bool = False,
        capped: bool = True,
    ) -> None:
        """Queue appending `message` (or replacing the one of `task_id`).

        With `create`, a missing conversation is created (and indexed) on the fly: a tool webhook may
        name a conversation the browser never created here, and its result must still be kept.
        """
        lua.queue_eval(
            pipe,
            _UPSERT_MESSAGE,
            [key(conversation_id)],
            [
                now,
                conversation_id,
                orjson.dumps(message).decode(),
                task_id or "",
                self.max_messages if capped else 0,
                "1" if create else "0",
            ],
        )
        if create:
            pipe.zadd(INDEX_KEY, {conversation_id: _score(now)}, nx=True)

    async def append_message(self, conversation_id: str, message: dict[str, Any], now: str) -> bool:
        """Append a client message; False if the conversation does not exist."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self.queue_upsert_message(pipe, conversation_id, message, now=now)
            (field,) = await pipe.execute()
        if field == "":
            raise ConversationFull(conversation_id)
        return field is not None

    async def exists(self, conversation_id: str) -> bool:
        return bool(await self.redis.exists(key(conversation_id)))

    async def get(self, conversation_id: str) -> Conversation | None:
        h = cast(dict[str, str], await self.redis.hgetall(key(conversation_id)))
        return Conversation.from_hash(h) if h else None

    async def list(self, *, offset: int, limit: int) -> tuple[list[Conversation], int]:
        """A page of conversations, newest first, and the total count."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(INDEX_KEY, offset, offset + limit - 1)
            pipe.zcard(INDEX_KEY)
            ids, total = await pipe.execute()
        if not ids:
            return [], total
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation_id in ids:
                pipe.hgetall(key(conversation_id))
            hashes = await pipe.execute()
        return [Conversation.from_hash(h) for h in hashes if h], total
