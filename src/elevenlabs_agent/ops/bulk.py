"""A pipelined RESP3 connection for bulk purges: read whole hashes (PTTL + HGETALL), UNLINK.

Backing up a million keys through redis-py costs tens of microseconds of Python per command; this
connection packs a batch of commands with one bytes template, parses replies in hiredis' C code
(RESP3 returns each hash as a dict already), and lets the caller keep the next batch in flight
while the current one is parsed. Only what purge needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any

import hiredis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# One key's two commands as raw RESP.
_READ_HASH = b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%b\r\n*2\r\n$7\r\nHGETALL\r\n$%d\r\n%b\r\n"
# hiredis compacts its buffer as it parses: feeding it big chunks costs more than small ones.
_READ_SIZE = 1 << 16


REPLY_TIMEOUT = 30.0


class HashReader:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
        # What was sent and not yet answered, in wire order: a batch of reads (its key count) or an
        # UNLINK (None). Replies come back in the same order.
        self._sent: deque[int | None] = deque()
        self.unlinked = 0

    @classmethod
    async def open(cls, url: str, timeout: float = 5.0) -> HashReader:
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(timeout):
                if options.get("connection_class") is UnixDomainSocketConnection:
                    reader, writer = await asyncio.open_unix_connection(options["path"])
                else:
                    tls = ssl.create_default_context() if options.get("connection_class") is SSLConnection else None
                    reader, writer = await asyncio.open_connection(options["host"], options.get("port", 6379), ssl=tls)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot reach Redis: {exc or 'timed out'}") from None
        async with asyncio.timeout(timeout):
            conn = cls(reader, writer)
            hello: list[str] = ["HELLO", "3"]
            if options.get("password") is not None:
                hello += ["AUTH", options.get("username") or "default", options["password"]]
            await conn._command(*hello)
            if options.get("db"):
                await conn._command("SELECT", str(options["db"]))
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
        """Queue an UNLINK; its count is added to `unlinked` once its reply is read."""
        self._writer.write(hiredis.pack_command(("UNLINK", *keys)))  # type: ignore[arg-type]
        self._sent.append(None)

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
