"""`elevenlabs:ratelimit:signed-url:{identity}`: fixed one-minute windows counting the signed URLs
one identity asked for.

Value: the number of calls in the current window (`GET elevenlabs:ratelimit:signed-url:user:3f…`).
Lifetime: the window (TTL 60 s), set by the first call in it. `identity` is a hash (`access.Identity`),
never a user name or token. One key per step, so it works on a Redis Cluster too.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

KEY_PREFIX = "elevenlabs:ratelimit:signed-url:"
SCAN_PATTERN = KEY_PREFIX + "*"
WINDOW_SECONDS = 60
HOLDS = "signed URLs one identity asked for in the current minute"


@dataclass(frozen=True)
class Window:
    count: int
    retry_after: int  # seconds until the window ends


class RateLimitStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def hit(self, identity: str) -> Window:
        """Count one call; the window's count so far (this one included) and its time left."""
        key = KEY_PREFIX + identity
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=WINDOW_SECONDS, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, pttl = await pipe.execute()
        return Window(int(count), max(1, -(-int(pttl) // 1000)))
