"""Writing whole keys back from a backup (the scans live in `stores.keyspace`).

A backup line is `{"key", "type", "ttl_ms", "value"}`: ttl_ms is the remaining TTL at backup time
(-1 = persistent) and value is readable JSON (a hash is an object; zset, stream, list and set are
lists).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.client import Pipeline


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_VALUE_SHAPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "hash": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
    "zset": lambda v: (
        isinstance(v, list)
        and all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int | float) for p in v
        )
    ),
    "stream": lambda v: (
        isinstance(v, list)
        and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict) for p in v)
    ),
    "list": _strings,
    "set": _strings,
}


def record_problem(record: Any) -> str | None:
    """Why a backup record cannot be restored, or None if it can."""
    if not isinstance(record, dict) or not {"key", "type", "ttl_ms", "value"} <= record.keys():
        return "a record needs key, type, ttl_ms and value"
    if not isinstance(record["key"], str) or not record["key"]:
        return "key must be a non-empty string"
    shape = _VALUE_SHAPES.get(record["type"])
    if shape is None:
        return f"unsupported type {record['type']!r}"
    if not isinstance(record["ttl_ms"], int) or isinstance(record["ttl_ms"], bool):
        return "ttl_ms must be an integer"
    if not shape(record["value"]):
        return f"value does not have the shape of a {record['type']}"
    return None


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
