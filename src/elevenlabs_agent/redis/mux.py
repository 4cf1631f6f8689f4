"""One multiplexed, auto-pipelined Redis connection for the request path (the ioredis model).

redis-py's asyncio client gives each concurrent command its own pooled connection: one write and
one read wake-up per command, plus its retry and health-check machinery. Under load that costs more
than the rest of a request (a route doing one PING: 3,300 req/s through redis-py, 10,700 through
this, same uvicorn, same machine). Here every command issued during one event-loop turn leaves in a
single write on one connection, and replies are matched to callers in order, which Redis guarantees
on a connection.

`MuxRedis` subclasses redis-py's `Redis`, so stores keep redis-py's command methods and reply
parsing (the same Python types either way); only the transport differs. Blocking commands (XREAD
BLOCK) must not use it: every reply queued behind them would wait too. It connects like the bulk
reader (`wire`: same socket and TLS set-up, same handshake).

A command that fails because the connection dropped is sent once more on a new connection (after a
Redis restart). Its first copy may have run before the connection dropped, so a resent write must
be idempotent. The service's writes are made so rather than never resent, because resending cannot
be avoided everywhere: redis-py's clients (`clients.connect_redis`, the cluster client that must
retry across a failover, the CLI's) resend too. Writes that were not idempotent by nature:
- a message append carries an id its script dedupes on (else: the message stored twice);
- a conversation create recognises its own record (else: 409 for a create that succeeded);
- a purge lease recognises its own token (else: "another purge holds the lease" for our own).
Three keep a bounded, accepted effect: a rate-limit window counts that call twice (stricter by
one); a callback completion whose answer was lost is answered as a duplicate (on one server its
recording ran in the same script, `stores/results.py`; on a cluster housekeeping's repair finishes
it after the grace period: late, never lost); and a relay
acknowledgement (`Outbox.ack`, HDEL) whose answer was lost finds its ids already gone, so that
request answers `acknowledged: []` and skips the "delivered" announcement, log line and metric of
the ids it did confirm. Its data effect is whole (the tasks are marked delivered first, then their
results leave the pending set, both idempotent); relay.js drops the ids it sent on any 200 whatever
the list says; the conversation page shows the delivery on its next update. Reporting ids already
gone as acknowledged would also do so for a client's own repeated acknowledgement, which answers
`[]` (tests/test_delivery.py). A new write must be idempotent, or accept its effect here in writing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis._parsers import BaseParser
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.client import EMPTY_RESPONSE
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from elevenlabs_agent.redis.urls import connection_options
from elevenlabs_agent.redis.wire import Command, open_socket, pack, set_up


def _pack(commands: Sequence[Command]) -> bytes:
    # redis-py names some commands with their subcommand ("SCRIPT LOAD"): two arguments.
    split = [(*command[0].split(), *command[1:]) if " " in command[0] else command for command in commands]
    try:
        return pack(split)
    except TypeError as exc:
        # What redis-py's encoder refuses (None, a bool) it refuses with DataError: so does this.
        raise DataError(str(exc)) from None


def _error(message: str) -> ResponseError:
    """Map a Redis error reply to redis-py's exception class for it (NOSCRIPT, READONLY, ...)."""
    return BaseParser.parse_error(message)  # type: ignore[no-untyped-call,no-any-return]


class _Wire(asyncio.Protocol):
    """The socket: batches outgoing commands per loop turn and resolves replies in order.

    Each send is one future for all of its replies, and one timer watches the whole connection:
    every command waits `timeout` at most, sends are answered in order, so the oldest send is always
    the first to expire (a timer per call cost more than the rest of the client under load)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=_error, encoding="utf-8")
        # Per send, oldest first: its future, how many replies it takes, those received, its deadline.
        self.pending: deque[tuple[asyncio.Future[list[Any]], int, list[Any], float]] = deque()
        self.outgoing: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except InvalidResponse as exc:
                self.abort(RedisConnectionError(f"protocol error from Redis: {exc}"))
                return
            if reply is False:
                return
            future, count, replies, _ = self.pending[0]
            replies.append(reply)
            if len(replies) == count:
                self.pending.popleft()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort(RedisConnectionError("Connection to Redis lost"))

    def abort(self, error: Exception) -> None:
        """Fail everything in flight: after a lost reply, later replies can no longer be matched."""
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.pending:
            future = self.pending.popleft()[0]
            if not future.done():
                future.set_exception(error)
                # A caller that was cancelled never awaits its future, and asyncio would log it as an
                # unretrieved error.
                future.exception()
        if self.transport is not None:
            self.transport.abort()

    def send(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Queue `count` commands (packed) for this loop turn's write; the future gets their replies."""
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(packed)
        future: asyncio.Future[list[Any]] = self.loop.create_future()
        deadline = self.loop.time() + self.timeout
        self.pending.append((future, count, [], deadline))
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._expire)
        return future

    def _expire(self) -> None:
        self.timer = None
        if not self.pending:
            return
        deadline = self.pending[0][3]
        if deadline <= self.loop.time():
            self.abort(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self.timer = self.loop.call_at(deadline, self._expire)

    def _flush(self) -> None:
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        if self.transport is not None and not self.lost:
            self.transport.write(data)


class MuxRedis(Redis):
    """A redis-py `Redis` whose commands share one multiplexed connection.

    A command that fails because the connection dropped is sent once more on a new connection (see
    the module docstring for why that is safe). A command with no reply within `timeout` fails with
    redis-py's TimeoutError and drops the connection.
    """

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(decode_responses=True, protocol=2)
        self.url = url
        self.timeout = timeout
        self._options = connection_options(url)
        self._wire: _Wire | None = None
        self._connecting = asyncio.Lock()
        # redis-py's callbacks by command name as the stores spell it (its table upper-cases every lookup).
        self._callbacks: dict[str, Any] = {}

    async def _connect(self) -> _Wire:
        async with self._connecting:
            if self._wire is not None and not self._wire.lost:
                return self._wire
            loop = asyncio.get_running_loop()
            _, wire = await open_socket(self._options, lambda: _Wire(loop, self.timeout), self.timeout)
            try:
                async with asyncio.timeout(self.timeout):
                    await set_up(self._options, 2, lambda commands: wire.send(_pack(commands), len(commands)))
            except (TimeoutError, RedisTimeoutError):
                wire.abort(RedisTimeoutError("Timeout reading from Redis"))
                raise RedisConnectionError(f"Error connecting to Redis at {self._options.where}: timed out") from None
            except BaseException:
                wire.abort(RedisConnectionError("connection set-up failed"))
                raise
            self._wire = wire
            return wire

    async def roundtrip(self, commands: Sequence[Command]) -> list[Any]:
        """Send commands back to back (one write) and return their raw replies, errors as values."""
        packed = _pack(commands)
        for attempt in (1, 2):
            wire = self._wire
            try:
                if wire is None or wire.lost:
                    wire = await self._connect()
                # A reply later than the timeout fails with redis-py's TimeoutError (`_Wire._expire`).
                return await wire.send(packed, len(commands))
            except RedisConnectionError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.02)
        raise AssertionError("unreachable")

    def parse(self, command: Command, reply: Any, options: dict[str, Any]) -> Any:
        options.pop("keys", None)
        if isinstance(reply, Exception):
            if isinstance(reply, ResponseError) and EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            return reply
        options.pop(EMPTY_RESPONSE, None)
        name = command[0]
        try:
            callback = self._callbacks[name]
        except KeyError:
            callback = self._callbacks[name] = self.response_callbacks.get(name)
        return callback(reply, **options) if callback else reply

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        (reply,) = await self.roundtrip([args])
        result = self.parse(args, reply, options)
        if isinstance(result, Exception):
            raise result
        return result

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return MuxPipeline(self, transaction)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self._wire is not None:
            self._wire.abort(RedisConnectionError("client closed"))
            self._wire = None


class MuxPipeline(Pipeline):
    """redis-py's Pipeline (same queueing methods), executed as one write on the shared connection;
    a transaction is MULTI … EXEC in that same write, so no other caller's command can interleave."""

    def __init__(self, client: MuxRedis, transaction: bool) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, None)
        self.mux = client

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = self.command_stack
        if not stack:
            return []
        try:
            commands = [args for args, _ in stack]
            if self.is_transaction:
                replies = await self.mux.roundtrip([("MULTI",), *commands, ("EXEC",)])
                queued_errors = [r for r in replies[1:-1] if isinstance(r, Exception)]
                if queued_errors:
                    raise queued_errors[0]
                if replies[-1] is None:
                    raise WatchError("Watched variable changed.")
                if isinstance(replies[-1], Exception):
                    raise replies[-1]
                replies = replies[-1]
            else:
                replies = await self.mux.roundtrip(commands)
            results = [self.mux.parse(args, r, dict(o)) for (args, o), r in zip(stack, replies, strict=True)]
        finally:
            await self.reset()  # type: ignore[no-untyped-call]
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results
