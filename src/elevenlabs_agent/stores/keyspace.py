"""Walking the keyspace by SCAN: the primitives every store's scans (and the operator tools) use.

Never KEYS: it blocks Redis for the whole keyspace. On a Redis Cluster every master is scanned in
turn. SCAN may return a key twice; every caller's action is idempotent, so that is harmless.

A caller walking the keyspace on the loop that serves requests (housekeeping) passes `pace`: it is
awaited after each batch the caller has dealt with, before the next one is read, so the walk gives
the loop back between batches for as long as the caller decides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

from elevenlabs_agent.redis.clients import is_cluster, primaries

SCAN_COUNT = 1000
MEMORY_SAMPLE = 50
# Awaited between two batches of a walk (see the module docstring).
Pace = Callable[[], Awaitable[None]]


async def scan_batches(
    redis: Redis, pattern: str, count: int = SCAN_COUNT, pace: Pace | None = None
) -> AsyncIterator[list[str]]:
    """Batches of key names matching `pattern`."""
    if is_cluster(redis):
        await redis.initialize()  # a new client knows no nodes before its first command
        for node in primaries(redis):
            async for node_keys in scan_node_batches(redis, node, pattern, count, pace):
                yield node_keys
        return
    cursor = 0
    while True:
        cursor, keys = await redis.scan(cursor=cursor, match=pattern, count=count)
        if keys:
            yield cast(list[str], keys)
            if pace is not None:
                await pace()
        if cursor == 0:
            return


async def scan_node_batches(
    redis: RedisCluster, node: ClusterNode, pattern: str, count: int = SCAN_COUNT, pace: Pace | None = None
) -> AsyncIterator[list[str]]:
    """SCAN one cluster node: the keys it holds. (redis-py's own cluster SCAN answers a cursor per
    node, which one loop over all masters cannot pass back.)"""
    cursor = 0
    while True:
        # A cluster client answers ({node name: next cursor}, keys).
        reply: Any = await redis.scan(cursor=cursor, match=pattern, count=count, target_nodes=node)
        cursors, keys = reply
        cursor = cursors[node.name]
        if keys:
            yield cast(list[str], keys)
            if pace is not None:
                await pace()
        if cursor == 0:
            return


async def count_keys(
    redis: Redis, pattern: str, max_keys: int | None = None, count: int = SCAN_COUNT, pace: Pace | None = None
) -> int:
    """Keys matching `pattern`; with `max_keys`, stops after about that many (a bounded view)."""
    found = 0
    async for keys in scan_batches(redis, pattern, count, pace):
        found += len(keys)
        if max_keys is not None and found >= max_keys:
            break
    return found


async def zscan_members(redis: Redis, zset: str, count: int, pace: Pace | None = None) -> AsyncIterator[list[str]]:
    """Batches of the members of one sorted set, by ZSCAN (never one ZRANGE of the whole set)."""
    cursor = 0
    while True:
        cursor, entries = await redis.zscan(zset, cursor, count=count)
        if entries:
            yield [cast(str, member) for member, _ in entries]
            if pace is not None:
                await pace()
        if cursor == 0:
            return


@dataclass(frozen=True)
class HashRow:
    key: str
    values: dict[str, str]  # the fields asked for that the hash has
    ttl: int  # seconds; -1 = persistent


async def hash_rows(redis: Redis, pattern: str, fields: Sequence[str]) -> AsyncIterator[list[HashRow]]:
    """Batches of the hashes matching `pattern`: the given fields and the remaining TTL of each
    (one round trip per SCAN batch; a key that expired meanwhile is left out)."""
    async for keys in scan_batches(redis, pattern):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, list(fields))
                pipe.ttl(key)
            replies = await pipe.execute()
        rows = []
        for i, key in enumerate(keys):
            values, ttl = replies[2 * i], replies[2 * i + 1]
            if ttl != -2:
                present = {f: v for f, v in zip(fields, values, strict=True) if v is not None}
                rows.append(HashRow(key, present, ttl))
        yield rows


@dataclass
class Footprint:
    count: int = 0
    persistent: int = 0  # keys without a TTL
    memory_bytes_estimate: int = 0  # from a sample of MEMORY_SAMPLE keys


async def footprint(redis: Redis, pattern: str) -> Footprint:
    """How many keys match `pattern`, how many have no TTL, and their memory (estimated)."""
    found = Footprint()
    sampled: list[str] = []
    async for keys in scan_batches(redis, pattern):
        found.count += len(keys)
        sampled += keys[: max(0, MEMORY_SAMPLE - len(sampled))]
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
            found.persistent += sum(ttl == -1 for ttl in await pipe.execute())
    if sampled:
        async with redis.pipeline(transaction=False) as pipe:
            for key in sampled:
                pipe.memory_usage(key)
            usage = [u for u in await pipe.execute() if u]
        if usage:
            found.memory_bytes_estimate = int(sum(usage) / len(usage) * found.count)
    return found
