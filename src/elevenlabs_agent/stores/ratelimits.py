"""`elevenlabs:ratelimit:{name}:{identity}`: fixed one-minute windows counting one identity's calls.

Value: the number of calls in the current window (`GET elevenlabs:ratelimit:signed-url:user:3f…`).
Lifetime: the window (TTL 60 s), set by the first call in it. `identity` is a hash (`access.Identity`),
never a user name or token. One key per step, so it works on a Redis Cluster too.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

KEY_PREFIX = "elevenlabs:ratelimit:"
SCAN_PATTERN = KEY_PREFIX + "*"
WINDOW_SECONDS = 60
HOLDS = "calls of one identity in the current minute (e.g. signed-url)"


@dataclass(frozen=True)
class Window:
    count: int
    retry_after: int  # seconds until the window ends


class RateLimitStore:
    def __init__(self, redis: Redis, name: str) -> None:
        self.redis = redis
        self.prefix = f"{KEY_PREFIX}{name}:"

    async def hit(self, identity: str) -> Window:
        """Count one call; the window's count so far (this one included) and its time left."""
        key = self.prefix + identity
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=WINDOW_SECONDS, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, pttl = await pipe.execute()
        return Window(int(count), max(1, -(-int(pttl) // 1000)))
