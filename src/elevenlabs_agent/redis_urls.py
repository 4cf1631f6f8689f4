"""Redis URLs: `REDIS_URL` names one server, a Redis Cluster or a Sentinel-managed master.

- `redis://[[user]:password@]host[:port][/db]`, `rediss://…`, `unix://…`: one server (redis-py's
  own forms, unchanged).
- `redis+cluster://[[user]:password@]host:port[,host:port…]` (`rediss+cluster://` for TLS): a Redis
  Cluster. The hosts are startup nodes: one reachable node is enough, the client discovers the rest
  and follows slot moves. Cluster has only database 0.
- `redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]` (`rediss+sentinel://`
  for TLS to the sentinels and the master): the current master of `service_name` as the sentinels
  report it; the client follows failovers. The user and password are the master's (sentinels are
  often configured without one); the sentinels' own go in the query:
  `?sentinel_username=…&sentinel_password=…`.

Default ports: 6379 for servers and cluster nodes, 26379 for sentinels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import parse_qs, unquote

from redis._parsers import AsyncCommandsParser
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
SENTINEL_QUERY = ("sentinel_username", "sentinel_password")

Kind = Literal["single", "cluster", "sentinel"]


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names. For `single` only `url` matters (redis-py parses it)."""

    kind: Kind
    url: str = field(repr=False)  # may hold a password
    hosts: tuple[tuple[str, int], ...] = ()  # cluster startup nodes, or sentinels
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    service_name: str | None = None  # sentinel
    db: int = 0
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def credentials(self) -> dict[str, Any]:
        """Credentials and TLS for a connection to a data node (a cluster node or the master)."""
        return {"username": self.username, "password": self.password, "ssl": self.tls}


def parse_redis_url(url: str) -> RedisTarget:
    """Raises ValueError with a readable reason for a malformed cluster or sentinel URL."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or (scheme not in CLUSTER_SCHEMES and scheme not in SENTINEL_SCHEMES):
        return RedisTarget("single", url)
    kind: Kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
    tls = CLUSTER_SCHEMES.get(scheme, False) or SENTINEL_SCHEMES.get(scheme, False)
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    default_port = 26379 if kind == "sentinel" else 6379
    hosts = tuple(_host_port(part, default_port) for part in hostlist.split(",") if part.strip())
    if not hosts:
        raise ValueError(f"{scheme}:// needs at least one host:port")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    allowed = SENTINEL_QUERY if kind == "sentinel" else ()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{scheme}:// does not take the option(s) {', '.join(unknown)}")
    segments = [unquote(s) for s in path.split("/") if s]
    if kind == "cluster":
        if segments not in ([], ["0"]):
            raise ValueError("a Redis Cluster has only database 0: use redis+cluster://host:port[,host:port]")
        return RedisTarget(kind, url, hosts, username, password, tls)
    if not segments or len(segments) > 2:
        raise ValueError("use redis+sentinel://host:port[,host:port]/service_name[/db]")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(f"the database must be a number, not {segments[1]!r}")
        db = int(segments[1])
    return RedisTarget(
        kind,
        url,
        hosts,
        username,
        password,
        tls,
        service_name=segments[0],
        db=db,
        sentinel_username=params.get("sentinel_username") or None,
        sentinel_password=params.get("sentinel_password") or None,
    )


def _host_port(part: str, default_port: int) -> tuple[str, int]:
    part = part.strip()
    if part.startswith("["):  # [IPv6]:port
        host, _, tail = part[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = part.rpartition(":") if ":" in part else (part, "", "")
    if not host:
        raise ValueError(f"no host in {part!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"not a port: {port_text!r}")
    return host, int(port_text)


def is_single_node(url: str) -> bool:
    """True for redis-py's own URL forms (one server), False for cluster and sentinel URLs."""
    return parse_redis_url(url).kind == "single"


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
        username=target.sentinel_username, password=target.sentinel_password, ssl=target.tls, decode_responses=True
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


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)
