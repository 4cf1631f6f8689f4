"""Bulk reads for purges: whole hashes (PTTL + HGETALL) and batched UNLINK, on the pipelined RESP3
connection of `elevenlabs_agent.redis.bulk`. Only what purge needs.

On a Redis Cluster there is one reader per master, fed with the keys that master's SCAN returned.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import hiredis
from redis.exceptions import ResponseError

from elevenlabs_agent.redis.bulk import BulkConnection
from elevenlabs_agent.redis.urls import ConnectionOptions, connection_options


class HashReader:
    def __init__(self, conn: BulkConnection, *, cluster: bool = False) -> None:
        self._conn = conn
        self.cluster = cluster
        # What was sent and not yet answered, in wire order: a batch of reads (its key count) or an
        # UNLINK (None). Replies come back in the same order.
        self._sent: deque[int | None] = deque()
        self.unlinked = 0

    @classmethod
    async def open(cls, url: str, timeout: float = 5.0) -> HashReader:
        """A reader on the one server of a `redis://`, `rediss://` or `unix://` URL."""
        return await cls.connect(connection_options(url), timeout=timeout)

    @classmethod
    async def connect(cls, options: ConnectionOptions, *, cluster: bool = False, timeout: float = 5.0) -> HashReader:
        """A reader on one server. With `cluster`, it is a cluster node: UNLINKs are split per hash
        slot (a multi-key command must stay within one slot), and it must only be given keys that
        node holds (its own SCAN's)."""
        return cls(await BulkConnection.open(options, timeout), cluster=cluster)

    def send_reads(self, keys: list[str]) -> None:
        """Queue PTTL + HGETALL for each key; read the answers with `receive_reads`."""
        self._conn.send_hash_reads(keys)
        self._sent.append(len(keys))

    def send_unlink(self, keys: list[str]) -> None:
        """Queue an UNLINK (one per hash slot on a cluster node); the count is added to `unlinked`
        once the replies are read."""
        self._sent.extend([None] * self._conn.send_unlinks(keys, per_slot=self.cluster))

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
        replies: list[Any] = await self._conn.replies(2 * len(keys))
        return [
            (key, ttl, value)
            for key, ttl, value in zip(keys, replies[0::2], replies[1::2], strict=True)
            if ttl != -2 and isinstance(value, dict) and value
        ]

    async def _count_unlinked(self) -> None:
        (reply,) = await self._conn.replies(1)
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(f"UNLINK failed: {reply}")
        self.unlinked += reply

    async def aclose(self) -> None:
        await self._conn.aclose()
