"""The request models (schemas/): the service's own error sentences, the first wrong field in the
model's order (as the hand-written parsers answered), and a document JSON Schema tools can read.
No service and no Redis: the routes' behaviour is in test_webhook/test_callback/test_conversations."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from elevenlabs_agent import limits
from elevenlabs_agent.errors import InvalidInput
from elevenlabs_agent.http import openapi
from elevenlabs_agent.schemas.base import decode
from elevenlabs_agent.schemas.conversations import NewConversation, SessionRegistration, parse_message
from elevenlabs_agent.schemas.webhooks import CallbackBody, ToolCall, _uneven_number

ID_RULE = "must be 1-128 characters of letters, digits, '_', '.', '-'"


def error_of(parse: Any, body: Any) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse(body)
    return caught.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body must be a JSON object"),
        ({"success": None}, f"requestId {ID_RULE}"),  # missing, and before a wrong later field
        ({"requestId": "ok", "success": 1}, "success must be a boolean"),
        ({"requestId": "ok", "success": True, "exitCode": True}, "exitCode must be an integer or null"),
        ({"requestId": "ok", "success": True, "error": [], "output": 1}, "output must be a string or null"),
        ({"requestId": "ok\n", "success": True}, f"requestId {ID_RULE}"),  # `$` would let a newline in
    ],
)
def test_callback_errors_keep_their_wording_and_order(body: Any, message: str) -> None:
    assert error_of(CallbackBody.parse, body) == message


def test_callback_keeps_what_was_sent() -> None:
    body = {"requestId": "t1", "success": True, "exitCode": 2, "error": None, "command": ["a"], "extra": 1}
    parsed = CallbackBody.parse(body)
    assert parsed.failed and parsed.request_id == "t1"
    assert parsed.result == {"success": True, "exitCode": 2, "error": None, "command": ["a"]}
    assert CallbackBody.parse(parsed.to_body()) == parsed


@pytest.mark.parametrize(
    ("body", "path_tool", "message"),
    [
        ({"tool_name": "ok"}, "bad name", "the tool name in the path " + ID_RULE.replace("128", "64")),
        ({"tool_name": [], "tool_args": []}, None, "tool_args must be an object"),
        ({"agent_id": {}, "tool_name": {}}, None, "tool_name " + ID_RULE.replace("128", "64")),
        ({"conversation_id": "a:b"}, None, f"conversation_id {ID_RULE}"),
    ],
)
def test_tool_call_errors_keep_their_wording_and_order(body: Any, path_tool: str | None, message: str) -> None:
    assert error_of(lambda b: ToolCall.parse(b, path_tool), body) == message


def test_tool_call_shapes() -> None:
    flat = ToolCall.parse({"conversation_id": "", "prompt": "go", "repository": "r"}, "fix")
    assert (flat.tool_name, flat.args, flat.conversation_id) == ("fix", {"prompt": "go", "repository": "r"}, None)
    original = ToolCall.parse({"tool_name": "", "tool_args": {"task": "x"}, "session_id": "s1"})
    assert (original.tool_name, original.args, original.session_id) == ("code_task", {"task": "x"}, "s1")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"status": [], "toolName": {}}, "role must be one of: assistant, system, tool, user"),
        ({"role": "user", "content": "x" * 100_001}, "content must be a string of at most 100000 characters"),
        (
            {"role": "user", "content": "", "source": None},
            "source must be one of: system_event, text, tool_output, voice",
        ),
        (
            {"role": "user", "content": "", "toolArgs": "x" * 100_001, "toolName": 1},
            "toolName must be a string of at most 64 characters",
        ),
        ({"role": "user", "content": "", "toolOutput": "x" * 100_001}, "toolOutput is too large"),
    ],
)
def test_message_errors_keep_their_wording_and_order(body: Any, message: str) -> None:
    assert error_of(parse_message, body) == message


def test_new_conversation_reserved_id_is_reported_before_later_fields() -> None:
    body = {"conversationId": "list", "metadata": "x"}
    assert error_of(lambda b: decode(NewConversation, b), body) == "conversationId 'list' is reserved"
    assert error_of(lambda b: decode(NewConversation, b), {"conversationId": 5}) == "conversationId must be a string"


def test_session_registration_checks_in_the_old_order() -> None:
    def refuse_http(name: str, value: Any) -> str | None:
        return f"{name} rejected: not ws" if value.startswith("http:") else None

    def registration(body: Any) -> SessionRegistration:
        return decode(SessionRegistration, body, refuse_http)

    assert error_of(registration, {"transport": "x"}) == "sessionUrl is required"
    assert error_of(registration, {"sessionUrl": "http://a", "transport": "x"}) == "sessionUrl rejected: not ws"
    assert error_of(registration, {"sessionUrl": "ws://a", "agentSessionId": ""}) == (
        "session and ElevenLabs conversation ids must be " + limits.ID_RULE
    )
    assert registration({"sessionUrl": "http://a"}).sessionUrl == "http://a"  # a valid body: the caller checks


def test_the_document_has_json_schema_patterns_only() -> None:
    document = openapi.document(max_body_bytes=1, max_callback_body_bytes=2)
    patterns = re.findall(rb'"pattern":"((?:[^"\\]|\\.)*)"', document)
    assert patterns and not [p for p in patterns if b"\\\\A" in p or b"\\\\Z" in p]
    schemas = orjson.loads(document)["components"]["schemas"]
    assert schemas["CallbackBody"]["properties"]["requestId"]["pattern"] == limits.ID_PATTERN


NUMBER_TEXT = st.binary(max_size=60) | st.text(alphabet='0123456789eE+-.x"', max_size=60).map(str.encode)


@given(NUMBER_TEXT)
def test_the_uneven_number_check_is_the_regex(raw: bytes) -> None:
    assert _uneven_number(raw) == (re.search(rb"\d{19}|[eE][+-]?\d{3}", raw) is not None)


BIG_INTEGERS = st.integers(min_value=-(2**70), max_value=2**70)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | BIG_INTEGERS | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# Mostly valid bodies, so that many take the fast path; numbers past 64 bits in kept members too.
CALLBACK_MEMBERS = st.fixed_dictionaries(
    {"requestId": st.sampled_from(["t-1", "t.2"]), "success": st.booleans()},
    optional={
        "exitCode": st.none() | BIG_INTEGERS | JSON_VALUES,
        "output": st.none() | st.text(max_size=10) | JSON_VALUES,
        "command": JSON_VALUES,
        "extra": JSON_VALUES,
    },
)


@given(CALLBACK_MEMBERS, st.sampled_from(["", " ", "1e400", "12345678901234567890"]))
def test_callback_bodies_decoded_from_bytes_read_as_the_parsed_path(members: dict[str, Any], number: str) -> None:
    """`from_json` answers only where the parsed path gives the same model (else None: that path
    decides, and words any error)."""
    raw = json.dumps(members).encode()  # orjson refuses integers past 64 bits
    if number.strip():
        raw = raw[:-1] + b',"n":' + number.encode() + b"}"
    fast = CallbackBody.from_json(raw)
    if fast is None:
        return
    assert fast == CallbackBody.parse(orjson.loads(raw))
