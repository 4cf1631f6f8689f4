"""A pipelined RESP3 connection for bulk purges: read whole hashes (PTTL + HGETALL), UNLINK.

Backing up a million keys through redis-py costs tens of microseconds of Python per command; this
connection packs a batch of commands with one bytes template, parses replies in hiredis' C code
(RESP3 returns each hash as a dict already), and lets the caller keep the next batch in flight
while the current one is parsed. Only what purge needs.

On a Redis Cluster there is one reader per master, fed with the keys that master's SCAN returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any

import hiredis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# One key's two commands as raw RESP.
_READ_HASH = b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%b\r\n*2\r\n$7\r\nHGETALL\r\n$%d\r\n%b\r\n"
# hiredis compacts its buffer as it parses: feeding it big chunks costs more than small ones.
_READ_SIZE = 1 << 16


REPLY_TIMEOUT = 30.0


class HashReader:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, cluster: bool = False) -> None:
        self._reader = reader
        self._writer = writer
        self.cluster = cluster
        self._parser = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
        # What was sent and not yet answered, in wire order: a batch of reads (its key count) or an
        # UNLINK (None). Replies come back in the same order.
        self._sent: deque[int | None] = deque()
        self.unlinked = 0

    @classmethod
    async def open(cls, url: str, timeout: float = 5.0) -> HashReader:
        """A reader on the one server of a `redis://`, `rediss://` or `unix://` URL."""
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        unix = options.get("connection_class") is UnixDomainSocketConnection
        return await cls.connect(
            options.get("host", ""),
            options.get("port", 6379),
            unix_path=options["path"] if unix else None,
            username=options.get("username"),
            password=options.get("password"),
            tls=options.get("connection_class") is SSLConnection,
            db=int(options.get("db") or 0),
            timeout=timeout,
        )

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        unix_path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        db: int = 0,
        cluster: bool = False,
        timeout: float = 5.0,
    ) -> HashReader:
        """A reader on one server. With `cluster`, it is a cluster node: UNLINKs are split per hash
        slot (a multi-key command must stay within one slot), and it must only be given keys that
        node holds (its own SCAN's)."""
        try:
            async with asyncio.timeout(timeout):
                if unix_path is not None:
                    reader, writer = await asyncio.open_unix_connection(unix_path)
                else:
                    context = ssl.create_default_context() if tls else None
                    reader, writer = await asyncio.open_connection(host, port, ssl=context)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot reach Redis: {exc or 'timed out'}") from None
        async with asyncio.timeout(timeout):
            conn = cls(reader, writer, cluster=cluster)
            hello: list[str] = ["HELLO", "3"]
            if password is not None:
                hello += ["AUTH", username or "default", password]
            await conn._command(*hello)
            if db:
                await conn._command("SELECT", str(db))
        return conn

    async def _command(self, *args: str) -> Any:
        self._writer.write(hiredis.pack_command(args))  # type: ignore[arg-type]
        (reply,) = await self._replies(1)
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(f"{args[0]} failed: {reply}")
        return reply

    def send_reads(self, keys: list[str]) -> None:
        """Queue PTTL + HGETALL for each key; read the answers with `receive_reads`."""
        parts = []
        for key in keys:
            raw = key.encode("utf-8", "surrogateescape")
            parts.append(_READ_HASH % (len(raw), raw, len(raw), raw))
        self._writer.write(b"".join(parts))
        self._sent.append(len(keys))

    def send_unlink(self, keys: list[str]) -> None:
        """Queue an UNLINK (one per hash slot on a cluster node); the count is added to `unlinked`
        once the replies are read."""
        groups: list[list[str]] = [keys]
        if self.cluster:
            by_slot: dict[int, list[str]] = {}
            for key in keys:
                by_slot.setdefault(key_slot(key.encode("utf-8", "surrogateescape")), []).append(key)
            groups = list(by_slot.values())
        self._writer.write(b"".join(hiredis.pack_command(("UNLINK", *group)) for group in groups))  # type: ignore[arg-type]
        self._sent.extend([None] * len(groups))

    async def finish_unlinks(self) -> None:
        """Read the replies of every UNLINK still unanswered."""
        while self._sent:
            if self._sent[0] is not None:
                raise RuntimeError("reads are still unanswered")
            self._sent.popleft()
            await self._count_unlinked()

    async def receive_reads(self, keys: list[str]) -> list[tuple[str, int, dict[str, str]]]:
        """(key, remaining TTL in ms, hash) for each key of the oldest unanswered `send_reads`, for
        those that still exist as a hash (UNLINK replies before it are counted on the way)."""
        while self._sent and self._sent[0] is None:
            self._sent.popleft()
            await self._count_unlinked()
        if not self._sent or self._sent.popleft() != len(keys):
            raise RuntimeError("receive_reads must follow send_reads with the same keys")
        replies = await self._replies(2 * len(keys))
        return [
            (key, ttl, value)
            for key, ttl, value in zip(keys, replies[0::2], replies[1::2], strict=True)
            if ttl != -2 and isinstance(value, dict) and value
        ]

    async def _count_unlinked(self) -> None:
        (reply,) = await self._replies(1)
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(f"UNLINK failed: {reply}")
        self.unlinked += reply

    async def _replies(self, count: int) -> list[Any]:
        replies: list[Any] = []
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                await self._writer.drain()
                while len(replies) < count:
                    reply = self._parser.gets()
                    if reply is False:
                        data = await self._reader.read(_READ_SIZE)
                        if not data:
                            raise RedisConnectionError("Redis closed the connection")
                        self._parser.feed(data)
                    else:
                        replies.append(reply)
        except TimeoutError:
            raise RedisTimeoutError(f"Redis did not answer within {REPLY_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise RedisConnectionError(f"connection to Redis failed: {exc}") from None
        return replies

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
