"""SCAN-based iteration and type-aware reading/writing of whole keys (for backup and restore).

A backup line is `{"key", "type", "ttl_ms", "value"}`: ttl_ms is the remaining TTL (-1 =
persistent) and value is readable JSON (string, hash object, zset/stream/list/set as lists).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

SCAN_COUNT = 1000


async def scan_batches(redis: Redis, pattern: str, count: int = SCAN_COUNT) -> AsyncIterator[list[str]]:
    """Batches of key names matching `pattern`, by SCAN (never KEYS: it blocks Redis).

    SCAN may return a key twice; callers' actions are idempotent, so that is harmless.
    """
    cursor = 0
    while True:
        cursor, keys = await redis.scan(cursor=cursor, match=pattern, count=count)
        if keys:
            yield cast(list[str], keys)
        if cursor == 0:
            return


def queue_read(pipe: Pipeline, key: str, redis_type: str) -> None:
    """Queue the commands that read a whole key of `redis_type` (one reply)."""
    if redis_type == "string":
        pipe.get(key)
    elif redis_type == "hash":
        pipe.hgetall(key)
    elif redis_type == "zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif redis_type == "stream":
        pipe.xrange(key)
    elif redis_type == "list":
        pipe.lrange(key, 0, -1)
    elif redis_type == "set":
        pipe.smembers(key)
    else:
        raise ValueError(f"unsupported type {redis_type}")


def to_json_value(redis_type: str, value: Any) -> Any:
    if redis_type == "zset":
        return [[member, score] for member, score in value]
    if redis_type == "stream":
        return [[entry_id, fields] for entry_id, fields in value]
    if redis_type == "set":
        return sorted(value)
    return value


def queue_write(pipe: Pipeline, key: str, redis_type: str, value: Any) -> None:
    """Queue the commands that recreate a key from its backup value."""
    if redis_type == "string":
        pipe.set(key, value)
    elif redis_type == "hash":
        if value:
            pipe.hset(key, mapping=value)
    elif redis_type == "zset":
        if value:
            pipe.zadd(key, {member: score for member, score in value})
    elif redis_type == "stream":
        for entry_id, fields in value:
            pipe.xadd(key, fields, id=entry_id)
    elif redis_type == "list":
        if value:
            pipe.rpush(key, *value)
    elif redis_type == "set":
        if value:
            pipe.sadd(key, *value)
    else:
        raise ValueError(f"unsupported type {redis_type}")


async def read_keys(redis: Redis, keys: list[str], redis_type: str | None = None) -> list[dict[str, Any]]:
    """Backup records for `keys`; keys that vanished meanwhile are left out.

    With `redis_type` known (a key family's), one round trip; otherwise TYPE is asked first.
    """
    if redis_type is None:
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
            types = await pipe.execute()
    else:
        types = [redis_type] * len(keys)
    present = [(key, t) for key, t in zip(keys, types, strict=True) if t != "none"]
    async with redis.pipeline(transaction=False) as pipe:
        for key, t in present:
            pipe.pttl(key)
            queue_read(pipe, key, t)
        replies = await pipe.execute()
    records = []
    for i, (key, t) in enumerate(present):
        ttl, value = replies[2 * i], replies[2 * i + 1]
        if ttl == -2:  # expired or deleted between SCAN and now
            continue
        records.append({"key": key, "type": t, "ttl_ms": ttl, "value": to_json_value(t, value)})
    return records
