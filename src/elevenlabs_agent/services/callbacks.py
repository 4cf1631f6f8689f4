"""cursor-runner's completion callback: authenticate, persist, acknowledge, then deliver.

cursor-runner sends each callback once and never retries, so everything needed to deliver the
result later is written before we answer 200, and nothing slow happens before that answer. While
Redis cannot take it, "written" means fsynced into the local spool (spool.py); `replay` records it
later through the same steps.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from redis.exceptions import ClusterError, OutOfMemoryError, ReadOnlyError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from elevenlabs_agent import events, metrics
from elevenlabs_agent.errors import InvalidInput, Unauthorized, Unavailable
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.schemas.webhooks import CallbackBody
from elevenlabs_agent.services import speech
from elevenlabs_agent.services.delivery import DeliveryService
from elevenlabs_agent.spool import Journal, SpooledCallback, SpoolRefused
from elevenlabs_agent.stores.conversations import ConversationStore
from elevenlabs_agent.stores.outbox import Outbox
from elevenlabs_agent.stores.results import ResultRecorder
from elevenlabs_agent.stores.tasks import Completion, Task, TaskStore, completion_args, hash_token
from elevenlabs_agent.timeutil import now_iso

__all__ = ["REDIS_UNREACHABLE", "CallbackService", "Outcome"]

log = get_logger()
# How live subscribers learn that a result entered the conversation.
REASON = "tool_result"
# Redis could not be reached or could not take the write now (refused, reset, timeout, cluster or a
# slot's master down, a failover in progress, out of memory): what sends a callback to the spool
# instead of a 503, and what pauses its replay. Any other Redis error is not cured by waiting.
REDIS_UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    TryAgainError,
    ReadOnlyError,
    OutOfMemoryError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True)
class Outcome:
    """A stored task result, as it goes into the conversation and the outbox."""

    task_id: str
    conversation_id: str
    tool_name: str
    tool_args: dict[str, Any]
    status: str
    summary: str
    result: dict[str, Any]
    completed_at: str

    @classmethod
    def from_task(cls, task: Task) -> Outcome:
        return cls(
            task_id=task.task_id,
            conversation_id=task.conversation_id,
            tool_name=task.tool_name,
            tool_args=task.tool_args,
            status=task.status,
            summary=task.summary or "",
            result=task.result or {},
            completed_at=task.completed_at or now_iso(),
        )


def _message(outcome: Outcome) -> dict[str, Any]:
    """The result's tool message in the conversation."""
    return {
        "role": "tool",
        "content": outcome.summary,
        "timestamp": outcome.completed_at,
        "source": "tool_output",
        "toolName": outcome.tool_name,
        "toolArgs": outcome.tool_args,
        "toolOutput": outcome.result.get("output") or outcome.result.get("error"),
        "status": outcome.status,
        "taskId": outcome.task_id,
    }


def _event(outcome: Outcome) -> dict[str, Any]:
    """The result's outbox event, which the live session receives."""
    return {
        "type": "task_update",
        "taskId": outcome.task_id,
        "conversationId": outcome.conversation_id,
        "status": outcome.status,
        "text": speech.update_text(outcome.task_id, outcome.summary),
        "completedAt": outcome.completed_at,
    }


class CallbackService:
    def __init__(
        self,
        tasks: TaskStore,
        conversations: ConversationStore,
        outbox: Outbox,
        delivery: DeliveryService,
        shared_secret: str | None,
        journal: Journal | None = None,
    ) -> None:
        self.journal = journal
        self.tasks = tasks
        self.conversations = conversations
        self.outbox = outbox
        self.delivery = delivery
        self.shared_secret = shared_secret
        self.recorder = ResultRecorder(tasks, outbox)

    async def handle(self, callback: CallbackBody, secret: str | None) -> dict[str, Any]:
        task_id = callback.request_id
        if not secret:
            return self._unauthorized(task_id, "missing secret")
        shared_ok = self.shared_secret is not None and hmac.compare_digest(secret.encode(), self.shared_secret.encode())
        token_hash = hash_token(secret)
        now = now_iso()
        try:
            return await self._store(callback, token_hash, shared_ok, now)
        except REDIS_UNREACHABLE as exc:
            if self.journal is None:
                raise
            # Redis cannot record it now: make it durable locally instead (replayed by SpoolReplayer).
            await self._spool(SpooledCallback(task_id, callback.to_body(), token_hash, shared_ok, now), exc)
            return {"success": True, "requestId": task_id, "status": "accepted"}

    async def _spool(self, record: SpooledCallback, cause: Exception) -> None:
        assert self.journal is not None
        try:
            await self.journal.append(record)
        except SpoolRefused as refused:
            log.error(events.CALLBACK_SPOOL_REFUSED, taskId=record.task_id, reason=refused.reason)
            metrics.CALLBACKS_SPOOL_REFUSED.labels(refused.reason).inc()
            # The 503 of a Redis outage without the spool (a Redis error keeps its redis.unavailable line).
            if isinstance(cause, RedisError):
                raise cause from None
            raise Unavailable("storage (Redis) is unavailable", message=speech.STORAGE_DOWN) from None
        log.warning(events.CALLBACK_SPOOLED, taskId=record.task_id, error=type(cause).__name__)
        metrics.CALLBACKS_SPOOLED.inc()
        metrics.CALLBACKS.labels("spooled").inc()

    async def _accept(
        self, callback: CallbackBody, token_hash: str, shared_ok: bool, at: str
    ) -> tuple[Completion, Callable[[], None]]:
        """Store the result on its task (secret check and idempotency in one atomic step) and, when
        the task accepted it, record it in the conversation and its outbox: one round trip on one
        server, `record` after the completion on a cluster. Returns the completion and what starts
        the result's delivery (only for an accepted one). Live and replayed callbacks alike."""
        task_id, status, result = callback.request_id, callback.task_status, callback.result
        summary = speech.result_summary(callback.failed, result)
        args = completion_args(token_hash, shared_ok, status, result, summary, at)
        if self.recorder.available:
            # conversationId, toolName and toolArgs are the task's: the one-step script writes them in.
            outcome = Outcome(task_id, "", "", {}, status, summary, result, at)
            message, event = _message(outcome), _event(outcome)
            recorded = await self.recorder.complete_and_record(
                task_id, args, message=message, event=event, reason=REASON, now=at, recorded_at=now_iso()
            )
            done = recorded.completion
            return done, lambda: self.delivery.deliver_to(done.conversation_id, task_id, recorded.push_url)
        done = await self.tasks.complete(
            task_id,
            token_hash=token_hash,
            shared_secret_ok=shared_ok,
            status=status,
            result=result,
            summary=summary,
            now=at,
        )
        if done.outcome == "accepted":
            task = (done.conversation_id, done.tool_name, done.tool_args)
            await self.record(Outcome(task_id, *task, status, summary, result, at))
        return done, lambda: self.delivery.spawn(self.delivery.deliver(done.conversation_id, task_id))

    async def _store(self, callback: CallbackBody, token_hash: str, shared_ok: bool, now: str) -> dict[str, Any]:
        task_id = callback.request_id
        done, deliver = await self._accept(callback, token_hash, shared_ok, now)
        if done.outcome == "unauthorized":
            return self._unauthorized(task_id, "wrong secret")
        if done.outcome == "unknown":
            log.warning(events.CALLBACK_UNKNOWN_TASK, taskId=task_id)
            metrics.CALLBACKS.labels("unknown_task").inc()
            return {"success": True, "requestId": task_id, "note": "unknown or expired task; nothing stored"}
        if done.outcome == "duplicate":
            log.info(events.CALLBACK_DUPLICATE, taskId=task_id, status=done.previous_status)
            metrics.CALLBACKS.labels("duplicate").inc()
            return {"success": True, "requestId": task_id, "duplicate": True, "status": done.previous_status}

        status = callback.task_status
        if callback.failed:
            log.info(
                events.CALLBACK_TASK_FAILED,
                taskId=task_id,
                conversationId=done.conversation_id,
                exitCode=callback.result.get("exitCode"),
            )
        log.info(events.CALLBACK_ACCEPTED, taskId=task_id, conversationId=done.conversation_id, status=status)
        metrics.labelled(metrics.CALLBACKS, "failed_task" if callback.failed else "accepted").inc()
        deliver()
        return {"success": True, "requestId": task_id, "status": status}

    async def record(self, outcome: Outcome) -> None:
        """Put a stored result into the conversation history and its outbox (one round trip on one
        server; on a Redis Cluster the mark is a second one, see `Batch.barrier`).

        Every step is idempotent and `recordedAt` is written last, so a task with `callbackAt` but no
        `recordedAt` is one whose recording was cut short; `repair` finishes it.
        """
        now = outcome.completed_at
        message, event = _message(outcome), _event(outcome)
        batch = self.tasks.batch()
        self.conversations.queue_upsert_message(
            batch,
            outcome.conversation_id,
            message,
            now=now,
            reason=REASON,
            task_id=outcome.task_id,
            create=True,
            capped=False,
        )
        self.outbox.queue_publish(batch, outcome.conversation_id, outcome.task_id, event)
        # `recordedAt` only once the message and the outbox entry are stored.
        batch.barrier()
        self.tasks.queue_mark_recorded(batch, outcome.task_id, now_iso())
        await batch.run()

    async def replay(self, spooled: SpooledCallback) -> str:
        """Record one spooled callback as if it arrived now (Redis errors propagate: the replayer
        keeps the record and tries again). Its secret is checked against the task here; a forged,
        unknown or invalid one is discarded. Returns the outcome (a `callbacks_replayed` or
        `callbacks_discarded` label)."""
        task_id = spooled.task_id
        try:
            callback = CallbackBody.parse(spooled.body)
        except InvalidInput:
            return self._discard(task_id, "invalid")
        if callback.request_id != task_id:
            return self._discard(task_id, "invalid")
        try:
            return await self._replay(spooled, callback)
        except REDIS_UNREACHABLE:
            raise
        except RedisError as exc:
            # Redis answered with an error that waiting does not cure (the task key holds something
            # else, a script error): the direct path would have failed the same way. Logged, dropped.
            log.warning(events.SPOOL_DISCARDED, taskId=task_id, reason="redis_error", error=type(exc).__name__)
            metrics.CALLBACKS_DISCARDED.labels("redis_error").inc()
            return "redis_error"

    async def _replay(self, spooled: SpooledCallback, callback: CallbackBody) -> str:
        task_id = spooled.task_id
        done, deliver = await self._accept(callback, spooled.token_hash, spooled.shared_ok, spooled.received_at)
        if done.outcome == "unauthorized":
            return self._discard(task_id, "forged")
        if done.outcome == "unknown":
            return self._discard(task_id, "unknown_task")
        if done.outcome == "duplicate":
            # Recorded before (a replay cut short, or Redis stored the result but its answer was lost):
            # finish the recording if that part is missing, else nothing to do.
            await self.repair([task_id])
            outcome = "duplicate"
        else:
            deliver()
            outcome = "accepted"
        log.info(events.SPOOL_REPLAYED, taskId=task_id, outcome=outcome, receivedAt=spooled.received_at)
        metrics.CALLBACKS_REPLAYED.labels(outcome).inc()
        return outcome

    def _discard(self, task_id: str, reason: str) -> str:
        log.warning(events.SPOOL_DISCARDED, taskId=task_id, reason=reason)
        metrics.CALLBACKS_DISCARDED.labels(reason).inc()
        return reason

    async def repair(self, task_ids: list[str]) -> int:
        """Finish recording results whose callback was cut short after the task was updated
        (a crash or a Redis failure between its two round trips). Returns how many were repaired."""
        repaired = 0
        for task in await self.tasks.get_many(task_ids):
            if task.callback_at is None or task.recorded_at is not None:
                continue
            await self.record(Outcome.from_task(task))
            log.warning(events.CALLBACK_RECORDING_REPAIRED, taskId=task.task_id, conversationId=task.conversation_id)
            self.delivery.spawn(self.delivery.deliver(task.conversation_id, task.task_id))
            repaired += 1
        return repaired

    def _unauthorized(self, task_id: str, why: str) -> NoReturn:
        log.warning(events.CALLBACK_UNAUTHORIZED, taskId=task_id, reason=why)
        metrics.CALLBACKS.labels("unauthorized").inc()
        raise Unauthorized("invalid callback secret")
