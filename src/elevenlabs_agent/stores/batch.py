"""A unit of work across stores: commands of several stores sent in as few round trips as the
deployment allows, each reply decoded by the store that queued it.

A service composes a batch from store methods (`TaskStore.queue_create(batch, ...)`), runs it, and
reads the typed `Reply` each method returned; it never sees a pipeline or a reply's position. What
ordering costs is decided here, not by the service: one server runs a pipeline in order, so a
`barrier()` is free there; a Redis Cluster runs each node's share of a pipeline concurrently, so there
a barrier starts another round trip. Writes only a cluster needs (index entries in other hash slots,
which a script there may not touch) are added by stores as best-effort `after` steps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, overload

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from elevenlabs_agent.redis.clients import is_cluster

T = TypeVar("T")
Queue = Callable[[Pipeline], object]


class Reply(Generic[T]):
    """One queued command's decoded reply, readable once its batch ran."""

    __slots__ = ("_ready", "_value")

    def __init__(self) -> None:
        self._ready = False

    def _set(self, value: T) -> None:
        self._value = value
        self._ready = True

    @property
    def value(self) -> T:
        if not self._ready:
            raise RuntimeError("the batch holding this reply has not run")
        return self._value


def _raw(reply: Any) -> Any:
    return reply


class Batch:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.cluster = is_cluster(redis)
        # Each stage is one pipeline (one round trip); a barrier on a cluster opens the next one.
        self._stages: list[list[tuple[Queue, Reply[Any], Callable[[Any], Any]]]] = [[]]
        self._after: list[Callable[[], Awaitable[object]]] = []

    @overload
    def add(self, queue: Queue) -> Reply[Any]: ...

    @overload
    def add(self, queue: Queue, decode: Callable[[Any], T]) -> Reply[T]: ...

    def add(self, queue: Queue, decode: Callable[[Any], Any] = _raw) -> Reply[Any]:
        """Queue one command (`queue` puts it on the pipeline); its reply goes through `decode`."""
        reply: Reply[Any] = Reply()
        self._stages[-1].append((queue, reply, decode))
        return reply

    def eval(self, script: str, keys: list[str], args: list[str | int]) -> Reply[Any]:
        """Queue a script as EVAL: redis-py's Script objects prefix every pipeline execution with a
        SCRIPT EXISTS round trip; EVAL of these short scripts costs a few hundred bytes instead and
        cannot hit NOSCRIPT after a Redis restart."""
        return self.add(lambda pipe: pipe.eval(script, len(keys), *keys, *args))

    def barrier(self) -> None:
        """What is queued from now on runs only once everything queued before is stored."""
        if self.cluster and self._stages[-1]:
            self._stages.append([])

    def after(self, step: Callable[[], Awaitable[object]]) -> None:
        """Run `step` once every stage ran (a store's follow-up that must not fail the batch)."""
        self._after.append(step)

    async def run(self) -> None:
        """Send the batch; a Redis error propagates and leaves later stages unsent."""
        for stage in self._stages:
            if stage:
                await self._send(stage)
        for step in self._after:
            await step()

    async def _send(self, stage: list[tuple[Queue, Reply[Any], Callable[[Any], Any]]]) -> None:
        # Queued only once the pipeline is entered: entering a cluster pipeline starts it afresh.
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, _, _ in stage:
                queue(pipe)
            replies = await pipe.execute()
        for (_, reply, decode), value in zip(stage, replies, strict=True):
            reply._set(decode(value))
