"""Sentences the voice agent says, and result summaries: one place, so wording stays consistent."""

from __future__ import annotations

import re
from typing import Any

TASK_STARTED = "I've started working on that. I'll let you know as soon as it's done."
DISPATCH_FAILED = (
    "I couldn't start that task because the coding service isn't available right now. Please try again in a moment."
)
STORAGE_DOWN = "I can't do that right now because my storage is unavailable. Please try again shortly."
TASK_ALREADY_FINISHED = "That task has already finished. I'll tell you the result in a moment."
CONVERSATION_FULL = "This conversation is too long for new tasks. Please start a new conversation."
NOT_CONFIGURED = "I can't run code tasks yet: this service has not been set up. Please tell the operator."
NO_TASKS = "I don't see any tasks for this conversation yet."
TASK_NOT_FOUND = "I couldn't find that task. It may have expired."
SUMMARY_CHARS = 600

_WS = re.compile(r"\s+")


def excerpt(text: str, limit: int = SUMMARY_CHARS) -> str:
    text = _WS.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def result_summary(failed: bool, result: dict[str, Any]) -> str:
    """What the agent should tell the user about a finished task (`output`/`error` are str or None)."""
    output = result.get("output") or ""
    error = result.get("error") or ""
    exit_code = result.get("exitCode")
    if failed:
        reason = excerpt(error or output or "no details were given")
        code = f" (exit code {exit_code})" if isinstance(exit_code, int) and exit_code != 0 else ""
        return f"The task failed{code}: {reason}"
    return "The task finished successfully." + (f" Output: {excerpt(output)}" if output.strip() else "")


def status_sentence(task_id: str, status: str, summary: str | None, error: str | None) -> str:
    if status == "pending":
        return f"Task {task_id} is still running."
    if summary:
        return f"Task {task_id}: {summary}"
    if status == "failed":
        return f"Task {task_id} failed: {error or 'no details were given'}"
    return f"Task {task_id} is {status}."


def update_text(task_id: str, summary: str) -> str:
    """The contextual update injected into the live conversation."""
    return f"Update on code task {task_id}: {summary}"
