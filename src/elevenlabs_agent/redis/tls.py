"""TLS to Redis, configured by the URL's query options exactly as redis-py names and reads them.

`rediss://host:6380/0?ssl_ca_certs=/etc/redis/ca.pem&ssl_certfile=…&ssl_keyfile=…&ssl_cert_reqs=required`:
the same options reach redis-py's clients (as keyword arguments) and this package's own connections
(the multiplexed client, the bulk reader), whose SSLContext is built by redis-py's own
`RedisSSLContext`: one set of names, one meaning, one code path.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, RedisSSLContext
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

# redis-py's SSLConnection keyword arguments (a test checks this list against the installed redis-py).
TLS_OPTIONS = (
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_include_verify_flags",
    "ssl_exclude_verify_flags",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_ca_path",
    "ssl_check_hostname",
    "ssl_min_version",
    "ssl_ciphers",
    "ssl_password",
)
# redis-py's defaults for a `rediss://` connection: verify the server's certificate and name.
_DEFAULTS: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}


def parse_tls_query(params: Mapping[str, str]) -> dict[str, Any]:
    """The TLS options of a URL query, typed as redis-py's `parse_url` types them."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        try:
            out[name] = parser(value) if parser else value
        except (TypeError, ValueError):
            raise ValueError(f"invalid value for {name!r} in the Redis URL") from None
    return out


@dataclass(frozen=True)
class TlsOptions:
    """redis-py's `ssl_*` keyword arguments for one TLS connection (a key password stays out of repr)."""

    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> TlsOptions:
        """The `ssl_*` entries of redis-py keyword arguments; ValueError for one redis-py does not take."""
        picked = {k: v for k, v in kwargs.items() if k.startswith("ssl_")}
        unknown = sorted(set(picked) - set(TLS_OPTIONS))
        if unknown:
            raise ValueError(f"unknown TLS option(s) {', '.join(unknown)}; known: {', '.join(TLS_OPTIONS)}")
        return cls({**_DEFAULTS, **picked})

    @property
    def redis_py(self) -> dict[str, Any]:
        """Keyword arguments for a redis-py client or connection."""
        return {"ssl": True, **self.options}

    def context(self) -> ssl.SSLContext:
        """The SSLContext redis-py would use; a clear ConnectionError when its files cannot be used."""
        try:
            return RedisSSLContext(**{k.removeprefix("ssl_"): v for k, v in self.options.items()}).get()
        except RedisError as exc:
            raise RedisConnectionError(f"invalid TLS options: {exc}") from None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise RedisConnectionError(f"cannot use the TLS files named in the Redis URL: {exc}") from None
