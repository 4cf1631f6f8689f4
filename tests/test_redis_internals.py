"""The redis-py internals `elevenlabs_agent.redis` relies on, checked by name and behaviour.

redis-py is pinned to one minor version (pyproject.toml). Before widening the pin, run this file
against the new version: a failure names what changed and where it is used.
"""

from __future__ import annotations

import inspect
import ssl
from typing import Any

import pytest
import redis
from redis._parsers import AsyncCommandsParser, BaseParser
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    RedisSSLContext,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.client import EMPTY_RESPONSE
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError

from elevenlabs_agent.redis.mux import MuxRedis
from elevenlabs_agent.redis.tls import TLS_OPTIONS
from elevenlabs_agent.redis.urls import CLUSTER_TLS_UNSUPPORTED


def require(condition: object, what: str, used_by: str) -> None:
    if not condition:
        pytest.fail(
            f"redis-py {redis.__version__} changed {what}, which {used_by} relies on: "
            "adapt that code (and this test) before widening the redis-py pin in pyproject.toml",
            pytrace=False,
        )


def params(function: Any) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p not in ("self", "args", "kwargs")]


def test_error_replies_map_to_redis_py_exceptions() -> None:
    used_by = "MuxRedis (redis/mux.py: hiredis replyError=BaseParser.parse_error)"
    require(callable(getattr(BaseParser, "parse_error", None)), "redis._parsers.BaseParser.parse_error", used_by)
    require(isinstance(BaseParser.parse_error("NOSCRIPT No matching script"), NoScriptError), "NOSCRIPT", used_by)
    require(isinstance(BaseParser.parse_error("READONLY replica"), ReadOnlyError), "READONLY", used_by)
    require(type(BaseParser.parse_error("ERR x")) is ResponseError, "ERR", used_by)


async def test_pipeline_internals_muxpipeline_uses() -> None:
    used_by = "MuxPipeline (redis/mux.py)"
    require(
        params(Pipeline.__init__) == ["connection_pool", "response_callbacks", "transaction", "shard_hint"],
        "Pipeline.__init__'s parameters",
        used_by,
    )
    client = MuxRedis("redis://127.0.0.1:1/0", timeout=1.0)
    pipe = client.pipeline(transaction=True)
    pipe.set("k", "v")
    pipe.mget([])
    stack = getattr(pipe, "command_stack", None)
    require(isinstance(stack, list) and len(stack) == 2, "Pipeline.command_stack", used_by)
    assert stack is not None
    require(stack[0][0] == ("SET", "k", "v"), "command_stack entries (args, options)", used_by)
    require(stack[1][1].get(EMPTY_RESPONSE) == [], "redis.client.EMPTY_RESPONSE in command options", used_by)
    require(getattr(pipe, "is_transaction", None) is True, "Pipeline.is_transaction", used_by)
    require(inspect.iscoroutinefunction(Pipeline.reset), "Pipeline.reset (a coroutine)", used_by)
    await pipe.reset()


def test_reply_callbacks_and_encoder() -> None:
    used_by = "MuxRedis.parse and _pack (redis/mux.py)"
    client = Redis(decode_responses=True, protocol=2)
    callbacks = getattr(client, "response_callbacks", {})
    require(callbacks.get("HGETALL") is not None, "Redis.response_callbacks (RESP2)", used_by)
    require(callbacks["HGETALL"](["a", "1"]) == {"a": "1"}, "the RESP2 HGETALL callback", used_by)
    encoder = client.connection_pool.get_encoder()  # type: ignore[no-untyped-call]
    require(encoder.encode(3) == b"3" and encoder.encode("é") == "é".encode(), "the pool's encoder", used_by)


def test_tls_options_are_redis_pys() -> None:
    used_by = "TlsOptions (redis/tls.py)"
    ssl_params = [p for p in params(SSLConnection.__init__) if p.startswith("ssl_")]
    require(sorted(ssl_params) == sorted(TLS_OPTIONS), "SSLConnection's ssl_* parameters", used_by)
    require(
        sorted(params(RedisSSLContext.__init__)) == sorted(o.removeprefix("ssl_") for o in TLS_OPTIONS),
        "RedisSSLContext's parameters",
        used_by,
    )
    cluster_ssl = [p for p in params(RedisCluster.__init__) if p.startswith("ssl_")]
    require(
        sorted(cluster_ssl) == sorted(set(TLS_OPTIONS) - set(CLUSTER_TLS_UNSUPPORTED)),
        "RedisCluster's ssl_* parameters",
        "parse_redis_url (redis/urls.py: CLUSTER_TLS_UNSUPPORTED)",
    )
    context = RedisSSLContext(cert_reqs="none", check_hostname=True).get()
    require(
        isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE and not context.check_hostname,
        "RedisSSLContext.get() (cert_reqs=none turns hostname checks off)",
        used_by,
    )
    require(URL_QUERY_ARGUMENT_PARSERS.get("ssl_check_hostname") is not None, "URL_QUERY_ARGUMENT_PARSERS", used_by)
    parsed = parse_url("rediss://u:p@h:1/2?ssl_ca_certs=/ca.pem&ssl_check_hostname=false")
    require(
        parsed.get("connection_class") is SSLConnection
        and parsed.get("ssl_ca_certs") == "/ca.pem"
        and parsed.get("ssl_check_hostname") is False
        and (parsed.get("host"), parsed.get("port"), parsed.get("db")) == ("h", 1, 2),
        "parse_url's result for rediss:// URLs",
        "connection_options (redis/urls.py)",
    )
    unix = parse_url("unix:///tmp/r.sock?db=1")
    require(unix.get("connection_class") is UnixDomainSocketConnection, "parse_url for unix://", "redis/urls.py")


def test_cluster_and_sentinel_internals() -> None:
    used_by = "ServiceCluster and SentinelMaster (redis/clients.py)"
    require(params(AsyncCommandsParser.initialize) == ["node"], "AsyncCommandsParser.initialize(node)", used_by)
    require(hasattr(AsyncCommandsParser(), "commands"), "AsyncCommandsParser.commands", used_by)
    require(
        "self.commands_parser = AsyncCommandsParser()" in inspect.getsource(RedisCluster.__init__),
        "RedisCluster.commands_parser",
        used_by,
    )
    require(
        params(RedisCluster.initialize) == ["additional_startup_nodes_info", "last_failed_node_name"],
        "RedisCluster.initialize's parameters",
        used_by,
    )
    require(
        params(ClusterPipeline.execute) == ["raise_on_error", "allow_redirections"],
        "ClusterPipeline.execute's parameters",
        used_by,
    )
    require(
        "sentinel_manager" in inspect.getsource(SentinelConnectionPool.__init__)
        and callable(getattr(SentinelConnectionPool, "get_master_address", None)),
        "SentinelConnectionPool.sentinel_manager / get_master_address",
        used_by + " and ops/purge.py",
    )
