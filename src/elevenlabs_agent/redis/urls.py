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

Default ports: 6379 for servers and cluster nodes, 26379 for sentinels. Every TLS form takes
redis-py's `ssl_*` query options (`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs`,
…: see `tls`), applied to every connection the URL leads to (nodes, master and sentinels).

`connection_options` turns a one-server URL (or one node of the others) into what this package's
own connections need: address, credentials, database, client name and TLS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from elevenlabs_agent.redis.tls import TlsOptions, parse_tls_query

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
SENTINEL_QUERY = ("sentinel_username", "sentinel_password")
# TLS options redis-py's cluster client does not take (its nodes could not use them).
CLUSTER_TLS_UNSUPPORTED = ("ssl_ca_path", "ssl_password")

Kind = Literal["single", "cluster", "sentinel"]


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names. For `single` only `url` matters (redis-py parses it)."""

    kind: Kind
    url: str = field(repr=False)  # may hold a password
    hosts: tuple[tuple[str, int], ...] = ()  # cluster startup nodes, or sentinels
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsOptions | None = None
    service_name: str | None = None  # sentinel
    db: int = 0
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def credentials(self) -> dict[str, Any]:
        """redis-py's credentials and TLS for a connection to a data node (a cluster node or the master)."""
        return {"username": self.username, "password": self.password, **self.tls_kwargs}

    @property
    def tls_kwargs(self) -> dict[str, Any]:
        return self.tls.redis_py if self.tls is not None else {}

    def node(self, host: str, port: int) -> ConnectionOptions:
        """This package's connection options for one data node (a cluster master, the sentinels' master)."""
        return ConnectionOptions(host, port, None, self.username, self.password, self.db, None, self.tls)


@dataclass(frozen=True)
class ConnectionOptions:
    """Where and how this package's own connections (multiplexed client, bulk reader) connect."""

    host: str = "localhost"
    port: int = 6379
    unix_path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    client_name: str | None = None
    tls: TlsOptions | None = None

    @property
    def where(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"


def connection_options(url: str) -> ConnectionOptions:
    """Options of a one-server URL, read by redis-py's own `parse_url` (same query options)."""
    kwargs: dict[str, Any] = dict(parse_url(url))
    connection_class = kwargs.get("connection_class")
    return ConnectionOptions(
        host=str(kwargs.get("host", "localhost")),
        port=int(kwargs.get("port", 6379)),
        unix_path=str(kwargs["path"]) if connection_class is UnixDomainSocketConnection else None,
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        db=int(kwargs.get("db") or 0),
        client_name=kwargs.get("client_name"),
        tls=TlsOptions.of(kwargs) if connection_class is SSLConnection else None,
    )


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
    tls_params = {k: v for k, v in params.items() if k.startswith("ssl_") and tls}
    allowed = SENTINEL_QUERY if kind == "sentinel" else ()
    unknown = sorted(set(params) - set(allowed) - set(tls_params))
    if unknown:
        raise ValueError(f"{scheme}:// does not take the option(s) {', '.join(unknown)}")
    if kind == "cluster" and set(tls_params) & set(CLUSTER_TLS_UNSUPPORTED):
        raise ValueError(
            f"{scheme}:// does not take {' or '.join(CLUSTER_TLS_UNSUPPORTED)} (redis-py's cluster client)"
        )
    tls_options = TlsOptions.of(parse_tls_query(tls_params)) if tls else None
    segments = [unquote(s) for s in path.split("/") if s]
    if kind == "cluster":
        if segments not in ([], ["0"]):
            raise ValueError("a Redis Cluster has only database 0: use redis+cluster://host:port[,host:port]")
        return RedisTarget(kind, url, hosts, username, password, tls_options)
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
        tls_options,
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
