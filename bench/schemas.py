"""msgspec Structs against pydantic v2 models on the hot routes' bodies (issue 15, part 1).

Decode + validate of a `POST /callback` body and of a `POST /agent-tools` tool call, and encode of
their answers, with the same rules in both libraries (id pattern, types, nullable fields). Each
library is measured both ways a route could use it: from the bytes, and from what `read_json`
already parsed (orjson + depth check). Prints ops/s and the msgspec/pydantic ratio; a few seconds.

    .venv/bin/python bench/schemas.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
import orjson
import pydantic

from elevenlabs_agent import limits
from elevenlabs_agent.schemas.webhooks import CallbackBody, ToolCall

PY_ID = limits.ID_REGEX.pattern
PY_OPTIONAL_ID = limits.OPTIONAL_ID_REGEX.pattern

CALLBACK = orjson.dumps(
    {
        "success": True,
        "requestId": "3f2b7c1e-9a4d-4e0b-8f1a-2c3d4e5f6a7b",
        "repository": "acme/app",
        "command": ["cursor-agent", "--print", "fix the flaky test"],
        "output": "Done: 3 files changed.\n" * 20,
        "error": None,
        "exitCode": 0,
        "duration": "41234ms",
        "timestamp": "2026-12-02T08:00:00.000Z",
        "branchName": "main",
    }
)
TOOL_CALL = orjson.dumps(
    {
        "agent_id": "agent_01jz",
        "session_id": "sess-1",
        "tool_name": "code_task",
        "tool_args": {"prompt": "Add a health check to the billing service", "repository": "acme/app"},
        "conversation_id": "conv_01jzabc",
    }
)
ANSWER = {
    "success": True,
    "requestId": "3f2b7c1e-9a4d-4e0b-8f1a-2c3d4e5f6a7b",
    "taskId": "3f2b7c1e-9a4d-4e0b-8f1a-2c3d4e5f6a7b",
    "status": "started",
    "message": "I've started that; I'll tell you when it's done.",
}

# --- msgspec ---------------------------------------------------------------------------------------
MId = Annotated[str, msgspec.Meta(pattern=PY_ID)]
MOptionalId = Annotated[str, msgspec.Meta(pattern=PY_OPTIONAL_ID)] | None


class MCallback(msgspec.Struct):
    requestId: MId
    success: bool
    exitCode: int | msgspec.UnsetType | None = msgspec.UNSET
    output: str | msgspec.UnsetType | None = msgspec.UNSET
    error: str | msgspec.UnsetType | None = msgspec.UNSET
    duration: str | msgspec.UnsetType | None = msgspec.UNSET
    repository: str | msgspec.UnsetType | None = msgspec.UNSET
    branchName: str | msgspec.UnsetType | None = msgspec.UNSET
    timestamp: str | msgspec.UnsetType | None = msgspec.UNSET
    command: Any = msgspec.UNSET


class MToolCall(msgspec.Struct):
    tool_name: Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9_.-]{0,64}\Z")] | None = None
    tool_args: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    conversation_id: MOptionalId = None
    session_id: MOptionalId = None
    agent_id: MOptionalId = None


class MAnswer(msgspec.Struct, omit_defaults=True):
    success: bool
    message: str
    requestId: str | None = None
    taskId: str | None = None
    status: str | None = None


# --- pydantic --------------------------------------------------------------------------------------
PId = Annotated[str, pydantic.StringConstraints(pattern=limits.ID_PATTERN)]
POptionalId = Annotated[str, pydantic.StringConstraints(pattern="^(" + limits.ID_CHARS + ")?$")] | None
STRICT = pydantic.ConfigDict(strict=True, extra="ignore")


class PCallback(pydantic.BaseModel):
    model_config = STRICT
    requestId: PId
    success: bool
    exitCode: int | None = None
    output: str | None = None
    error: str | None = None
    duration: str | None = None
    repository: str | None = None
    branchName: str | None = None
    timestamp: str | None = None
    command: Any = None


class PToolCall(pydantic.BaseModel):
    model_config = STRICT
    tool_name: Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Za-z0-9_.-]{0,64}$")] | None = None
    tool_args: dict[str, Any] | None = None
    conversation_id: POptionalId = None
    session_id: POptionalId = None
    agent_id: POptionalId = None


class PAnswer(pydantic.BaseModel):
    success: bool
    message: str
    requestId: str | None = None
    taskId: str | None = None
    status: Literal["started", "finished", "failed"] | None = None


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of `fn`, in batches so that the clock is read rarely."""
    batch, calls = 1000, 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(batch):
            fn()
        calls += batch
    return calls / elapsed


def cases() -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """name -> (msgspec, pydantic): the same work in each library."""
    callback_decoder = msgspec.json.Decoder(MCallback)
    tool_decoder = msgspec.json.Decoder(MToolCall)
    encoder = msgspec.json.Encoder()
    m_answer = MAnswer(**ANSWER)
    p_answer = PAnswer(**ANSWER)
    return {
        "callback: bytes -> model": (
            lambda: callback_decoder.decode(CALLBACK),
            lambda: PCallback.model_validate_json(CALLBACK),
        ),
        "callback: parsed JSON -> model": (
            lambda: msgspec.convert(orjson.loads(CALLBACK), MCallback),
            lambda: PCallback.model_validate(orjson.loads(CALLBACK)),
        ),
        "tool call: bytes -> model": (
            lambda: tool_decoder.decode(TOOL_CALL),
            lambda: PToolCall.model_validate_json(TOOL_CALL),
        ),
        "tool call: parsed JSON -> model": (
            lambda: msgspec.convert(orjson.loads(TOOL_CALL), MToolCall),
            lambda: PToolCall.model_validate(orjson.loads(TOOL_CALL)),
        ),
        "tool answer: model -> bytes": (
            lambda: encoder.encode(m_answer),
            lambda: p_answer.model_dump_json(exclude_none=True),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    args = parser.parse_args()
    baseline = rate(lambda: orjson.loads(CALLBACK), args.seconds)
    print(f"{'case':34} {'msgspec ops/s':>14} {'pydantic ops/s':>15} {'ratio':>6}")
    for name, (with_msgspec, with_pydantic) in cases().items():
        m, p = rate(with_msgspec, args.seconds), rate(with_pydantic, args.seconds)
        print(f"{name:34} {m:14,.0f} {p:15,.0f} {m / p:6.1f}")
    print(f"(orjson.loads of the callback body alone: {baseline:,.0f} ops/s)")
    # What the routes run after read_json (schemas/webhooks.py): the model plus its normalisation.
    service = {
        "callback: CallbackBody.parse": lambda: CallbackBody.parse(orjson.loads(CALLBACK)).result,
        "tool call: ToolCall.parse": lambda: ToolCall.parse(orjson.loads(TOOL_CALL)),
    }
    for name, fn in service.items():
        print(f"service, {name:25} {rate(fn, args.seconds):14,.0f} ops/s (parsed JSON -> model)")


if __name__ == "__main__":
    main()
