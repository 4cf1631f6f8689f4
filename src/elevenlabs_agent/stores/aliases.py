"""`elevenlabs:alias:{externalId}`: maps an id that ElevenLabs sends to our conversation id.

The tool webhook carries ElevenLabs' own conversation id (`system__conversation_id`) or a session
id, never ours; the browser names them when it registers its session. Value: a string, our
conversation id (`GET elevenlabs:alias:<id>`). Lifetime: TTL 24 h, refreshed by each registration.
"""

from __future__ import annotations

from redis.asyncio import Redis

from elevenlabs_agent.stores.batch import Batch

KEY_PREFIX = "elevenlabs:alias:"
SCAN_PATTERN = KEY_PREFIX + "*"
DEFAULT_TTL = 86_400
HOLDS = "an ElevenLabs conversation/session id -> our conversation id"


def key(external_id: str) -> str:
    return KEY_PREFIX + external_id


class AliasStore:
    def __init__(self, redis: Redis, ttl: int = DEFAULT_TTL) -> None:
        self.redis = redis
        self.ttl = ttl

    def queue_set(self, batch: Batch, external_id: str, conversation_id: str) -> None:
        batch.add(lambda pipe: pipe.set(key(external_id), conversation_id, ex=self.ttl))

    async def resolve(self, external_ids: list[str]) -> str | None:
        """Our conversation id for the first of `external_ids` that has an alias."""
        if not external_ids:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            for external_id in external_ids:
                pipe.get(key(external_id))
            found: list[str | None] = await pipe.execute()
        return next((c for c in found if c), None)
