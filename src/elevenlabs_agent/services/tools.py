"""The ElevenLabs server-tool webhook: record a task, dispatch it, answer with a speakable sentence."""

from __future__ import annotations

import base64
import os
import time
import uuid
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from elevenlabs_agent import events, metrics
from elevenlabs_agent.clients.cursor_runner import CursorRunnerClient
from elevenlabs_agent.errors import Conflict, InvalidInput
from elevenlabs_agent.limits import is_valid_id, must_be_id
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.schemas.webhooks import PASS_THROUGH, ToolCall
from elevenlabs_agent.services import speech
from elevenlabs_agent.stores.aliases import AliasStore
from elevenlabs_agent.stores.conversations import ConversationStore, Upserted
from elevenlabs_agent.stores.sessions import SessionStore
from elevenlabs_agent.stores.tasks import NewTask, TaskStore, hash_token
from elevenlabs_agent.stores.tool_calls import ToolCallRecorder
from elevenlabs_agent.timeutil import now_iso

STATUS_TOOL = "get_task_status"
RECENT_TASKS = 5
# How live subscribers learn that a tool call's pending message entered the conversation.
REASON = "tool_call"

log = get_logger()


def _answer(task_id: str, status: str, message: str, **extra: str) -> dict[str, Any]:
    """A code tool's answer to ElevenLabs: `message` is what the agent says."""
    return {
        "success": status != "failed",
        "requestId": task_id,
        "taskId": task_id,
        "status": status,
        "message": message,
        **extra,
    }


def _external_ids(call: ToolCall) -> list[str]:
    """The ids a webhook carries that an alias may map to our conversation id, first match wins."""
    return [i for i in (call.conversation_id, call.session_id) if i]


def _new_task_id_and_token() -> tuple[str, str]:
    """A uuid4 task id and a 256-bit callback token (as `secrets.token_urlsafe(32)` makes it) from one
    system call: each os.urandom is one, on the tool call's critical path."""
    drawn = os.urandom(48)
    token = base64.urlsafe_b64encode(drawn[16:]).rstrip(b"=").decode()
    return str(uuid.UUID(bytes=drawn[:16], version=4)), token


def _note_unmapped(call: ToolCall, aliased: bool) -> None:
    if not aliased and call.conversation_id:
        log.info(events.WEBHOOK_CONVERSATION_UNMAPPED, conversationId=call.conversation_id)


def _required(conversation_id: str | None) -> str:
    """The conversation a code task goes to; a code task needs one."""
    if conversation_id is None:
        raise InvalidInput("conversation_id is required for code tools (map it from system__conversation_id)")
    return conversation_id


class ToolService:
    def __init__(
        self,
        tasks: TaskStore,
        conversations: ConversationStore,
        sessions: SessionStore,
        aliases: AliasStore,
        cursor_runner: CursorRunnerClient,
        public_url: str,
    ) -> None:
        self.tasks = tasks
        self.conversations = conversations
        self.sessions = sessions
        self.aliases = aliases
        self.recorder = ToolCallRecorder(tasks, conversations)
        self.cursor_runner = cursor_runner
        self.public_url = public_url.rstrip("/")

    async def handle(self, call: ToolCall) -> dict[str, Any]:
        if call.tool_name == STATUS_TOOL:
            return await self.task_status(call)
        return await self.start_code_task(call)

    async def resolve_conversation(self, call: ToolCall) -> str | None:
        """Our conversation id for the ids the webhook carries (ElevenLabs sends its own)."""
        found = await self.aliases.resolve(_external_ids(call))
        _note_unmapped(call, found is not None)
        return found or call.conversation_id

    async def start_code_task(self, call: ToolCall) -> dict[str, Any]:
        prompt = call.prompt()
        task_id, token = _new_task_id_and_token()
        conversation_id, message = await self._record_task(call, task_id, prompt, token)
        payload: dict[str, Any] = {
            "id": task_id,
            "prompt": prompt,
            "conversationId": conversation_id,
            "callbackUrl": f"{self.public_url}/callback?secret={quote(token)}",
            "queueType": "api",
        }
        payload.update({k: call.args[k] for k in PASS_THROUGH if k in call.args})
        started = time.perf_counter()
        result = await self.cursor_runner.execute_async(payload)
        metrics.DISPATCH_DURATION.observe(time.perf_counter() - started)
        metrics.labelled(metrics.DISPATCHES, result.reason).inc()
        if result.ok:
            log.info(events.DISPATCH_SUCCEEDED, taskId=task_id, conversationId=conversation_id)
            metrics.labelled(metrics.WEBHOOKS, "task_started").inc()
            return _answer(task_id, "started", speech.TASK_STARTED)
        log.warning(
            events.DISPATCH_FAILED,
            taskId=task_id,
            conversationId=conversation_id,
            reason=result.reason,
            statusCode=result.status_code,
            detail=result.detail,
        )
        return await self._dispatch_failed(conversation_id, task_id, message, result.reason)

    async def _record_task(self, call: ToolCall, task_id: str, prompt: str, token: str) -> tuple[str, dict[str, Any]]:
        """Resolve our conversation id, then store the task, its pending message and the session's
        last tool call (one round trip on one server, where one script does both); the conversation
        id and the message."""
        now = now_iso()
        message = {
            "role": "tool",
            "content": f"Started code task {task_id}.",
            "timestamp": now,
            "source": "tool_output",
            "toolName": call.tool_name,
            "toolArgs": call.args,
            "status": "pending",
            "taskId": task_id,
        }
        # The conversation id is filled in once resolved (below, or by the one-step script).
        task = NewTask(task_id, "", call.tool_name, call.args, prompt, hash_token(token), now)
        if self.recorder.available:
            recorded = await self.recorder.resolve_and_record(
                _external_ids(call), call.conversation_id, task, message=message, reason=REASON
            )
            _note_unmapped(call, recorded.aliased)
            conversation_id, written = _required(recorded.conversation_id), recorded.written
        else:
            conversation_id = _required(await self.resolve_conversation(call))
            written = await self._create(replace(task, conversation_id=conversation_id), message)
        if written == "full":
            await self.tasks.fail_dispatch(task_id, "conversation is full", now_iso())
            metrics.WEBHOOKS.labels("conversation_full").inc()
            raise Conflict("the conversation holds the maximum number of messages", message=speech.CONVERSATION_FULL)
        log.info(events.TASK_CREATED, taskId=task_id, conversationId=conversation_id, toolName=call.tool_name)
        return conversation_id, message

    async def _create(self, task: NewTask, message: dict[str, Any]) -> Upserted:
        # One round trip: the task must exist before cursor-runner can possibly call back.
        batch = self.tasks.batch()
        self.tasks.queue_create(batch, task)
        written = self.conversations.queue_upsert_message(
            batch, task.conversation_id, message, now=task.now, reason=REASON, task_id=task.task_id, create=True
        )
        self.sessions.queue_note_task(batch, task.conversation_id, task.task_id, task.now)
        await batch.run()
        return written.value

    async def _dispatch_failed(
        self, conversation_id: str, task_id: str, message: dict[str, Any], reason: str
    ) -> dict[str, Any]:
        error = f"dispatch failed: {reason}"
        if not await self.tasks.fail_dispatch(task_id, error, now_iso()):
            # cursor-runner's callback beat its own answer (or its timeout): the task did run.
            metrics.WEBHOOKS.labels("task_started").inc()
            return _answer(task_id, "finished", speech.TASK_ALREADY_FINISHED)
        failed_at = now_iso()
        failed = {
            **message,
            "status": "failed",
            "content": f"Could not start code task {task_id}: {reason}.",
            "timestamp": failed_at,
        }
        batch = self.tasks.batch()
        self.conversations.queue_upsert_message(
            batch, conversation_id, failed, now=failed_at, reason="tool_result", task_id=task_id, capped=False
        )
        await batch.run()
        metrics.WEBHOOKS.labels("dispatch_failed").inc()
        return _answer(task_id, "failed", speech.DISPATCH_FAILED, error=error)

    async def task_status(self, call: ToolCall) -> dict[str, Any]:
        task_id = next(
            (call.args[k] for k in ("task_id", "taskId", "requestId") if isinstance(call.args.get(k), str)),
            None,
        )
        metrics.WEBHOOKS.labels("status_query").inc()
        if task_id is not None:
            if not is_valid_id(task_id):
                raise InvalidInput(must_be_id("task_id"))
            task = await self.tasks.get(task_id)
            log.info(events.TASK_STATUS_QUERIED, taskId=task_id, found=task is not None)
            if task is None:
                return {
                    "success": False,
                    "taskId": task_id,
                    "status": "unknown",
                    "message": speech.TASK_NOT_FOUND,
                }
            return {
                "success": True,
                "taskId": task_id,
                "status": task.status,
                "task": task.to_public(),
                "message": speech.status_sentence(task_id, task.status, task.summary, task.error),
            }
        conversation_id = await self.resolve_conversation(call)
        if conversation_id is None:
            raise InvalidInput("get_task_status needs task_id or conversation_id")
        conversation = await self.conversations.get(conversation_id)
        tool_messages = [m for m in (conversation.messages if conversation else []) if m.get("taskId")]
        recent = tool_messages[-RECENT_TASKS:][::-1]
        log.info(events.TASK_STATUS_QUERIED, conversationId=conversation_id, found=len(recent))
        if not recent:
            return {"success": True, "tasks": [], "message": speech.NO_TASKS}
        tasks = [
            {
                "taskId": m["taskId"],
                "status": m.get("status"),
                "toolName": m.get("toolName"),
                "content": m.get("content"),
                "timestamp": m.get("timestamp"),
            }
            for m in recent
        ]
        latest = recent[0]
        sentence = speech.status_sentence(
            latest["taskId"],
            latest.get("status", "unknown"),
            latest.get("content") if latest.get("status") != "pending" else None,
            None,
        )
        return {"success": True, "tasks": tasks, "message": sentence}
