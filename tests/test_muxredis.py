"""MuxRedis against a real redis-server: many callers on one connection, replies matched in order,
redis-py's reply types and errors, transactions, and what happens when Redis dies or hangs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from elevenlabs_agent.redis.mux import MuxRedis
from elevenlabs_agent.redis.server import RedisServer
from elevenlabs_agent.stores import lua


@pytest.fixture
async def mux(redis: aioredis.Redis, redis_server: RedisServer) -> AsyncIterator[MuxRedis]:
    client = MuxRedis(redis_server.url, timeout=2.0)
    yield client
    await client.aclose()


async def test_concurrent_callers_get_their_own_replies(mux: MuxRedis) -> None:
    await asyncio.gather(*(mux.set(f"k{i}", f"v{i}") for i in range(500)))
    values = await asyncio.gather(*(mux.get(f"k{i}") for i in range(500)))
    assert values == [f"v{i}" for i in range(500)]


async def test_replies_are_parsed_like_redis_py(mux: MuxRedis, redis: aioredis.Redis) -> None:
    await redis.hset("h", mapping={"a": "1", "b": "2"})
    await redis.zadd("z", {"m": 2.5})
    await redis.xadd("s", {"f": "v"})
    for command in (
        lambda c: c.hgetall("h"),
        lambda c: c.hgetall("missing"),
        lambda c: c.exists("h", "missing"),
        lambda c: c.zrevrange("z", 0, -1, withscores=True),
        lambda c: c.xrange("s"),
        lambda c: c.set("x", "1", nx=True, px=1000),
        lambda c: c.ping(),
    ):
        await redis.delete("x")
        expected = await command(redis)
        await redis.delete("x")
        assert await command(mux) == expected


async def test_error_replies_raise_redis_py_exceptions(mux: MuxRedis) -> None:
    with pytest.raises(ResponseError, match="boom"):
        await mux.eval("return redis.error_reply('boom')", 0)
    with pytest.raises(NoScriptError):
        await mux.evalsha("0" * 40, 0)
    # Scripts registered through redis-py's helper load themselves after NOSCRIPT.
    script = mux.register_script("return ARGV[1]")
    await mux.script_flush()
    assert await script(keys=["k"], args=["v"]) == "v"
    # And so do the stores' own (a restarted Redis has none loaded).
    own = lua.Script(mux, "return {KEYS[1], ARGV[1]}")
    assert await own(["k"], ["v"]) == ["k", "v"]
    await mux.script_flush()
    assert await own(["k2"], ["v2"]) == ["k2", "v2"]
    assert await mux.get("still-usable") is None


async def test_pipelines_and_transactions(mux: MuxRedis, redis: aioredis.Redis) -> None:
    async with mux.pipeline(transaction=False) as pipe:
        pipe.set("a", "1").incr("a").eval("return redis.error_reply('no')", 0).get("a")
        results = await pipe.execute(raise_on_error=False)
    assert results[:2] == [True, 2] and isinstance(results[2], ResponseError) and results[3] == "2"

    async with mux.pipeline(transaction=True) as pipe:
        pipe.incr("counter").hgetall("missing").incr("counter")
        assert await pipe.execute() == [1, {}, 2]

    # A transaction's commands leave in one write wrapped in MULTI/EXEC: concurrent callers'
    # commands cannot land between them.
    async def transaction(i: int) -> list[int]:
        async with mux.pipeline(transaction=True) as pipe:
            pipe.rpush("log", f"{i}-a").rpush("log", f"{i}-b")
            return await pipe.execute()

    await asyncio.gather(*(transaction(i) for i in range(100)), *(mux.rpush("log", "x") for _ in range(100)))
    log = await redis.lrange("log", 0, -1)
    for position, item in enumerate(log):
        if item.endswith("-a"):
            assert log[position + 1] == item[:-1] + "b"


async def test_url_database_is_selected(redis_server: RedisServer, redis: aioredis.Redis) -> None:
    client = MuxRedis(redis_server.url.rsplit("/", 1)[0] + "/3", timeout=2.0)
    await client.set("in-db-3", "yes")
    await client.aclose()
    assert await redis.get("in-db-3") is None
    other = aioredis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3", decode_responses=True)
    assert await other.get("in-db-3") == "yes"
    await other.flushdb()
    await other.aclose()


async def test_redis_restart_is_survived_without_a_new_client(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = MuxRedis(server.url, timeout=2.0)
    try:
        await client.set("kept", "1")
        server.stop()
        with pytest.raises(RedisConnectionError):
            await client.get("kept")
        server.start()
        # The next command reconnects by itself; AOF kept the data.
        assert await client.get("kept") == "1"
    finally:
        await client.aclose()
        server.stop()


async def test_a_hung_redis_fails_callers_within_the_timeout_then_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = MuxRedis(server.url, timeout=0.5)
    try:
        assert await client.ping()
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        results = await asyncio.gather(*(client.ping() for _ in range(20)), return_exceptions=True)
        elapsed = time.monotonic() - started
        assert all(isinstance(r, RedisTimeoutError | RedisConnectionError) for r in results), results
        assert elapsed < 2.0
        os.kill(server.process.pid, signal.SIGCONT)
        assert await client.ping()
    finally:
        if server.process is not None:
            os.kill(server.process.pid, signal.SIGCONT)
        await client.aclose()
        server.stop()


async def test_nothing_listening_is_a_connection_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")  # never started: its port is free
    client = MuxRedis(server.url, timeout=1.0)
    with pytest.raises(RedisConnectionError):
        await client.ping()


def test_works_on_uvloop(redis_server: RedisServer) -> None:
    """The service runs on uvloop, whose transports are not asyncio.Transport subclasses."""

    async def main() -> list[str | None]:
        client = MuxRedis(redis_server.url, timeout=2.0)
        try:
            await client.set("uv", "loop")
            return await asyncio.gather(*(client.get("uv") for _ in range(50)))
        finally:
            await client.aclose()

    assert uvloop.run(main()) == ["loop"] * 50
