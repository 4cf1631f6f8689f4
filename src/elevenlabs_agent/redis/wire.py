"""What this package's own connections share: opening the socket (TCP, Unix or TLS) and the
handshake that follows (credentials, client name, protocol, database), as redis-py does them.

The multiplexed client (`mux`, RESP2, replies matched to callers) and the bulk reader (`bulk`,
RESP3, replies read in batches) differ only in how they read; both connect through here.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import hiredis
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from elevenlabs_agent.redis.urls import ConnectionOptions

Command = Sequence[Any]
P = TypeVar("P", bound=asyncio.BaseProtocol)


async def open_socket(
    options: ConnectionOptions, protocol_factory: Callable[[], P], timeout: float
) -> tuple[asyncio.Transport, P]:
    """Connect within `timeout`; every failure is a ConnectionError saying what went wrong (an
    untrusted or misnamed certificate is named as such)."""
    loop = asyncio.get_running_loop()
    context = options.tls.context() if options.tls is not None else None
    try:
        async with asyncio.timeout(timeout):
            if options.unix_path is not None:
                transport, protocol = await loop.create_unix_connection(protocol_factory, options.unix_path)
            else:
                transport, protocol = await loop.create_connection(
                    protocol_factory, options.host, options.port, ssl=context
                )
    except ssl.SSLCertVerificationError as exc:
        raise RedisConnectionError(
            f"TLS certificate of Redis at {options.where} not accepted: certificate verify failed: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raise RedisConnectionError(f"TLS handshake with Redis at {options.where} failed: {exc.reason}") from None
    except TimeoutError:
        raise RedisConnectionError(f"Error connecting to Redis at {options.where}: timed out") from None
    except OSError as exc:
        raise RedisConnectionError(f"Error connecting to Redis at {options.where}: {exc.strerror or exc}") from None
    # uvloop's transports implement asyncio.Transport without subclassing it.
    return transport, protocol


def handshake(options: ConnectionOptions, protocol: int) -> list[Command]:
    """The commands that set a new connection up, in redis-py's order: RESP3 says HELLO (with the
    credentials and name), RESP2 keeps AUTH and CLIENT SETNAME so that it also works before Redis 6."""
    commands: list[Command] = []
    if protocol == 3:
        hello: list[Any] = ["HELLO", 3]
        if options.password is not None:
            hello += ["AUTH", options.username or "default", options.password]
        if options.client_name:
            hello += ["SETNAME", options.client_name]
        commands.append(hello)
    else:
        if options.password is not None:
            user = options.username
            commands.append(("AUTH", user, options.password) if user else ("AUTH", options.password))
        if options.client_name:
            commands.append(("CLIENT", "SETNAME", options.client_name))
    if options.db:
        commands.append(("SELECT", options.db))
    return commands


async def set_up(
    options: ConnectionOptions, protocol: int, roundtrip: Callable[[Sequence[Command]], Awaitable[list[Any]]]
) -> None:
    """Run `handshake` on a new connection; a refused step is an AuthenticationError or a
    ConnectionError naming the command (never its arguments: they hold the password)."""
    commands = handshake(options, protocol)
    if not commands:
        return
    for command, reply in zip(commands, await roundtrip(commands), strict=True):
        if isinstance(reply, Exception):
            text = str(reply)
            if command[0] == "AUTH" or text.startswith(("WRONGPASS", "NOAUTH")):
                raise AuthenticationError(f"Redis at {options.where} refused the credentials: {text}")
            raise RedisConnectionError(f"Redis at {options.where} refused {command[0]}: {text}")


def pack(commands: Sequence[Command]) -> bytes:
    """RESP for several commands, arguments already bytes or str (hiredis' packer, in C)."""
    return b"".join(hiredis.pack_command(tuple(command)) for command in commands)
