"""`elevenlabs:lock:{name}`: a lease that keeps two operators from purging at the same time.

Value: a random owner token (`GET elevenlabs:lock:purge`). Lifetime: TTL 60 s, renewed while the
holder works, so a crashed holder frees it within a minute.
"""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

KEY_PREFIX = "elevenlabs:lock:"
SCAN_PATTERN = KEY_PREFIX + "*"
DEFAULT_TTL = 60
HOLDS = "owner token of a running purge (lease)"

_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class LockBusy(Exception):
    pass


class Lease:
    def __init__(self, redis: Redis, name: str, ttl: int = DEFAULT_TTL) -> None:
        self.redis = redis
        self.key = KEY_PREFIX + name
        self.ttl_ms = ttl * 1000
        self.token = secrets.token_hex(16)

    async def acquire(self) -> None:
        if await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return
        # Our own SET, resent after its answer was lost with the connection, finds the lease ours.
        if await self.redis.get(self.key) == self.token:
            return
        ttl = await self.redis.pttl(self.key)
        raise LockBusy(f"another purge holds {self.key} (expires in {max(ttl, 0) / 1000:.0f} s)")

    async def renew(self) -> bool:
        return bool(await self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    async def release(self) -> None:
        await self.redis.eval(_RELEASE, 1, self.key, self.token)
