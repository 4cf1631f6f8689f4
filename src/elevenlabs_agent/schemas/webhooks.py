"""The webhook bodies (SPEC §4): ElevenLabs' tool call and cursor-runner's completion callback."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

import msgspec
import orjson
from msgspec import UNSET, Meta, UnsetType

from elevenlabs_agent import limits
from elevenlabs_agent.errors import InvalidInput
from elevenlabs_agent.schemas.base import Id, Model, OptionalId, decode

DEFAULT_CODE_TOOL = "code_task"
ENVELOPE = frozenset({"tool_name", "tool_args", "conversation_id", "session_id", "agent_id"})
PROMPT_ARGS = ("prompt", "task", "instruction", "query")
PASS_THROUGH = ("repository", "branchName", "maxIterations")
_TOOL_NAME = re.compile(limits.TOOL_NAME_PATTERN)
_ID_ERROR = limits.must_be_id
# Empty means "not named here" (the path's tool name, else the default code tool).
_BODY_TOOL_NAME = rf"\A{limits.TOOL_NAME_CHARS}{{0,{limits.TOOL_NAME_MAX_LENGTH}}}\Z"


class ToolCallBody(Model):
    """Either shape of SPEC §4. The original one: `{agent_id, session_id, tool_name, tool_args,
    conversation_id?}` (the presence of `tool_args` selects it). A flat tool body: every member but
    `tool_name`, `tool_args`, `conversation_id`, `session_id`, `agent_id` is a tool argument. The
    prompt of a code tool is its `prompt` (or `task`, `instruction`, `query`) argument, at most 50000
    characters after trimming; without one, the tool name and its other arguments as JSON.
    `get_task_status` takes `task_id` (or `taskId`, `requestId`). A code tool needs
    `conversation_id` (map it from `system__conversation_id`); without one it is a 400."""

    tool_args: Annotated[dict[str, Any], Meta(description="The tool's arguments (original shape).")] | UnsetType = UNSET
    tool_name: (
        Annotated[
            str,
            Meta(
                pattern=_BODY_TOOL_NAME,
                description=f"Empty or absent: the path's tool name, else `{DEFAULT_CODE_TOOL}`.",
            ),
        ]
        | None
    ) = None
    conversation_id: OptionalId = None
    session_id: OptionalId = None
    agent_id: OptionalId = None
    prompt: Annotated[Any, Meta(description="Flat shape: the code tool's prompt (a string).")] = UNSET
    task_id: Annotated[Any, Meta(description="get_task_status: the task to report on (an Id when a string).")] = UNSET

    ERRORS: ClassVar[dict[str, str | tuple[str, str]]] = {
        "tool_name": limits.must_be_tool_name("tool_name"),
        "tool_args": "tool_args must be an object",
        "conversation_id": _ID_ERROR("conversation_id"),
        "session_id": _ID_ERROR("session_id"),
        "agent_id": _ID_ERROR("agent_id"),
    }


class ToolCall(msgspec.Struct, frozen=True):
    """A webhook body normalised from either accepted shape (SPEC §4)."""

    tool_name: str
    args: dict[str, Any]
    conversation_id: str | None
    session_id: str | None
    agent_id: str | None

    @classmethod
    def parse(cls, body: Any, path_tool: str | None = None) -> ToolCall:
        if not isinstance(body, dict):
            raise InvalidInput(limits.NOT_AN_OBJECT)
        if path_tool is not None and not _TOOL_NAME.fullmatch(path_tool):
            # Checked even when the body names the tool: a malformed path is never silently ignored.
            raise InvalidInput(limits.must_be_tool_name("the tool name in the path"))
        envelope = decode(ToolCallBody, body)
        if isinstance(envelope.tool_args, UnsetType):  # a flat tool body: all but the envelope are arguments
            args = {k: v for k, v in body.items() if k not in ENVELOPE}
        else:
            args = envelope.tool_args
        return cls(
            tool_name=envelope.tool_name or path_tool or DEFAULT_CODE_TOOL,
            args=args,
            conversation_id=envelope.conversation_id or None,
            session_id=envelope.session_id or None,
            agent_id=envelope.agent_id or None,
        )

    def prompt(self) -> str:
        for name in PROMPT_ARGS:
            value = self.args.get(name)
            if isinstance(value, str) and value.strip():
                prompt = value.strip()
                break
        else:
            extra = {k: v for k, v in self.args.items() if k not in PASS_THROUGH and k not in PROMPT_ARGS}
            if not extra:
                raise InvalidInput("a code tool needs a 'prompt' argument")
            prompt = f"{self.tool_name}: {orjson.dumps(extra).decode()}"
        if len(prompt) > limits.MAX_PROMPT_CHARS:
            raise InvalidInput(f"prompt is longer than {limits.MAX_PROMPT_CHARS} characters")
        return prompt


OptionalText = str | None | UnsetType
# What of cursor-runner's body is kept (the task's result); anything else it may add is ignored.
RESULT_FIELDS = (
    "success",
    "exitCode",
    "output",
    "error",
    "duration",
    "repository",
    "branchName",
    "command",
    "timestamp",
)
_TEXT_FIELDS = ("output", "error", "duration", "repository", "branchName", "timestamp")
# Numbers the two JSON parsers read differently: orjson makes an integer past 64 bits a float and
# refuses an overflowing exponent even in an ignored member; msgspec keeps the integer, skips the member.
# `_uneven_number` finds the text of `\d{19}|[eE][+-]?\d{3}` with every digit read as 0, "E" as "e"
# and "-" as "+": a translate and three substring searches, a tenth of that regex's cost.
_FOLD_NUMBERS = bytes.maketrans(b"123456789E-", b"000000000e+")
_NINETEEN_DIGITS = b"0" * 19


def _uneven_number(raw: bytes | bytearray) -> bool:
    folded = raw.translate(_FOLD_NUMBERS)
    return _NINETEEN_DIGITS in folded or b"e000" in folded or b"e+000" in folded


class CallbackBody(Model):
    """cursor-runner's completion, validation-error or crash body. A non-zero `exitCode` makes the task
    failed even with `success:true`."""

    requestId: Id
    success: bool
    exitCode: int | UnsetType | None = UNSET
    output: OptionalText = UNSET
    error: OptionalText = UNSET
    duration: OptionalText = UNSET
    repository: OptionalText = UNSET
    branchName: OptionalText = UNSET
    timestamp: OptionalText = UNSET
    command: Annotated[Any, Meta(description="Kept as sent (cursor-runner sends a list of strings).")] = UNSET

    ERRORS: ClassVar[dict[str, str | tuple[str, str]]] = {
        "requestId": _ID_ERROR("requestId"),
        "success": "success must be a boolean",
        "exitCode": "exitCode must be an integer or null",
        **{name: f"{name} must be a string or null" for name in _TEXT_FIELDS},
    }

    @classmethod
    def parse(cls, body: Any) -> CallbackBody:
        return decode(cls, body)

    @classmethod
    def from_json(cls, raw: bytes | bytearray) -> CallbackBody | None:
        """The body decoded straight from its bytes (2x faster than parsing, then converting), or None
        for the parsed path (`parse`), which alone words errors. Only a body that path would accept
        with the same values is decoded here: at most MAX_JSON_DEPTH brackets in all (so nothing, not
        even an ignored member, is nested deeper), and no number the parsers read differently."""
        if not limits.shallow_by_count(raw) or _uneven_number(raw):
            return None
        try:
            return msgspec.json.decode(raw, type=cls)
        except msgspec.DecodeError:
            return None

    @property
    def request_id(self) -> str:
        return self.requestId

    @property
    def failed(self) -> bool:
        # cursor-runner reports success:true even when the command exited non-zero.
        return not self.success or self.exitCode not in (None, 0, UNSET)

    @property
    def task_status(self) -> str:
        """The status the task takes from this callback."""
        return "failed" if self.failed else "completed"

    @property
    def result(self) -> dict[str, Any]:
        """The fields worth keeping, as sent (null included, absent left out)."""
        return {k: v for k in RESULT_FIELDS if (v := getattr(self, k)) is not UNSET}

    def to_body(self) -> dict[str, Any]:
        """The body again, with only the fields we keep (what the spool journals; `parse` reads it back)."""
        return {"requestId": self.requestId, **self.result}
