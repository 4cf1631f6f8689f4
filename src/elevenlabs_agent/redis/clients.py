"""redis-py clients for every `REDIS_URL` form (see `urls`): one server, a Redis Cluster, a
Sentinel-managed master, with the URL's TLS options.

redis-py resends a command after a dropped connection (its `Retry`, and the cluster client's own
retries on failover), as MuxRedis does: see `mux` for why that is safe for every write the service
makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard, cast

from redis._parsers import AsyncCommandsParser
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError

from elevenlabs_agent.redis.urls import ConnectionOptions, RedisTarget, connection_options, parse_redis_url


class ClusterUnavailable(RedisConnectionError):
    """No cluster node answered, or a hash slot has no master serving it."""


class _CommandTableOnce(AsyncCommandsParser):
    """redis-py re-reads the COMMAND table from the default node (the first master) every time it
    re-learns the slot map, that is after every failed command: with that master down, commands for
    the healthy masters failed too. The table does not change with the topology: read it once."""

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if not self.commands:
            await super().initialize(node)


class ServiceCluster(RedisCluster):
    """redis-py's RedisCluster, except that an unreachable cluster raises a `ConnectionError` (a
    `RedisError`) like an unreachable single server does, not a bare `RedisClusterException`: the
    service's "Redis is down" handling (503, /ready, housekeeping) then covers clusters too; and one
    master down does not fail commands for the others (`_CommandTableOnce`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands_parser = _CommandTableOnce()

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> RedisCluster:
        try:
            return await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        except RedisError:
            raise
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise ClusterUnavailable(str(exc)) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _ServicePipeline(self, transaction)  # type: ignore[abstract]


class _ServicePipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except SlotNotCoveredError as exc:
            raise ClusterUnavailable(str(exc)) from exc


def open_cluster(target: RedisTarget, **options: Any) -> RedisCluster:
    """A cluster client; `options` are RedisCluster's (timeouts, max_connections per node, ...)."""
    nodes = [ClusterNode(host, port) for host, port in target.hosts]
    return ServiceCluster(startup_nodes=nodes, **target.credentials, **options)


class SentinelMaster(Redis):
    """The master client of a Sentinel URL; closing it also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        await super().aclose(close_connection_pool)
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def open_sentinel_master(target: RedisTarget, **options: Any) -> Redis:
    """A client of the current master of the target's service; it follows failovers."""
    assert target.service_name is not None
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    # A sentinel query is short even for a client whose commands may block (XREAD BLOCK).
    if sentinel_options.get("socket_timeout") is None:
        sentinel_options["socket_timeout"] = sentinel_options.get("socket_connect_timeout")
    sentinel_options.update(
        username=target.sentinel_username, password=target.sentinel_password, decode_responses=True, **target.tls_kwargs
    )
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(
        target.service_name, redis_class=SentinelMaster, db=target.db, **target.credentials, **options
    )
    return cast(Redis, client)


def open_redis(url: str, **options: Any) -> Redis:
    """A client for any URL form. A cluster client is returned typed as `Redis`: it offers the same
    command and pipeline API the stores use; code that must know (SCAN) checks `is_cluster`."""
    target = parse_redis_url(url)
    if target.kind == "cluster":
        return cast(Redis, open_cluster(target, **options))
    if target.kind == "sentinel":
        return open_sentinel_master(target, **options)
    return Redis.from_url(url, **options)


# RedisCluster's metaclass is typing's Protocol one, whose isinstance runs in Python: asked on every
# batch, so the answer is kept per client type (the check is by class, never by shape).
_CLUSTER_TYPES: dict[type, bool] = {}


def is_cluster(client: object) -> TypeGuard[RedisCluster]:
    kind = type(client)
    found = _CLUSTER_TYPES.get(kind)
    if found is None:
        found = _CLUSTER_TYPES[kind] = isinstance(client, RedisCluster)
    return found


def primaries(client: RedisCluster) -> list[ClusterNode]:
    """The cluster's masters (one per slot range), as the client currently knows them."""
    return sorted(client.get_primaries(), key=lambda node: node.name)


@dataclass(frozen=True)
class DataNode:
    """A server that holds keys, to connect to directly: the one server, the Sentinel's current
    master, or one cluster master (`cluster_node`, which holds only its own slots' keys)."""

    options: ConnectionOptions
    cluster_node: ClusterNode | None = None


async def data_nodes(client: Redis, url: str) -> list[DataNode]:
    """Every server holding keys for `url`, as `client` (opened on that URL) finds them now."""
    target = parse_redis_url(url)
    if is_cluster(client):
        await client.initialize()  # a new client knows no nodes before its first command
        return [DataNode(target.node(node.host, int(node.port)), node) for node in primaries(client)]
    if target.kind == "sentinel":
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        host, port = await pool.get_master_address()  # type: ignore[no-untyped-call]
        return [DataNode(target.node(host, port))]
    return [DataNode(connection_options(url))]


def connect_redis(url: str, timeout: float, *, blocking: bool = False) -> Redis:
    """The service's redis-py client for any `REDIS_URL` form.

    For one server, the pool makes callers wait (up to `timeout`) for a free connection under bursts
    instead of failing at once with "too many connections". A cluster client is typed as `Redis`: it
    offers the command and pipeline API the stores use.
    """
    # After a Redis restart every pooled connection is dead: retry (at most twice, each on a fresh
    # connection) instead of failing a request. Timeouts are not retried, so a hung Redis still fails within `timeout`.
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2, supported_errors=(RedisConnectionError,))
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": timeout,
        # A blocking XREAD legitimately waits longer than any command timeout.
        "socket_timeout": None if blocking else timeout,
        "health_check_interval": 15,
        "retry": retry,
    }
    target = parse_redis_url(url)
    if target.kind == "cluster":
        # Per node. The cluster client retries (with this backoff) on connection errors, timeouts and
        # slot moves by itself; a full pool fails at once rather than waiting.
        return cast(Redis, open_cluster(target, max_connections=10_000 if blocking else 1024, **options))
    if target.kind == "sentinel":
        return open_sentinel_master(target, max_connections=10_000 if blocking else 256, **options)
    pool = BlockingConnectionPool.from_url(url, max_connections=10_000 if blocking else 256, timeout=timeout, **options)
    return Redis.from_pool(pool)
