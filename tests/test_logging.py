"""Logs are JSON lines with stable event names and bound ids, and never carry a secret (SPEC §2, §8)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
import structlog

from elevenlabs_agent import events
from elevenlabs_agent import logging as agent_logging
from elevenlabs_agent.logging import REDACTED, Redactor
from tests.conftest import StackFactory, eventually
from tests.helpers import Captured

SRC = Path(__file__).resolve().parent.parent / "src" / "elevenlabs_agent"
EVENT_NAME = re.compile(r"^[a-z_]+\.[a-z_]+$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Tests here point logging at capsys' stream; afterwards, point it back at the real stdout."""
    yield
    agent_logging.configure("info")


def _first(records: list[dict[str, Any]], event: str, **match: Any) -> dict[str, Any]:
    for record in records:
        if record["event"] == event and all(record.get(k) == v for k, v in match.items()):
            return record
    raise AssertionError(f"no {event} line with {match}; events seen: {sorted({r['event'] for r in records})}")


async def test_full_flow_logs_json_lines_with_ids_and_no_secrets(
    capsys: pytest.CaptureFixture[str], make_stack: StackFactory
) -> None:
    # capsys is requested first so that it outlives the stack (whose shutdown still logs).
    captured = Captured(capsys)
    stack = await make_stack()  # configures logging now, while capsys holds sys.stdout
    bodies: list[str] = []

    async def keep_body(response: httpx.Response) -> None:
        await response.aread()
        bodies.append(response.text)

    stack.http.event_hooks["response"].append(keep_body)

    # The browser: conversation, signed URL, voice session, registration with the signed URL.
    conversation_id = await stack.create_conversation(agentId="agent_test")
    voice, signed_url, eleven_id = await stack.open_voice_session()
    signature = parse_qs(urlsplit(signed_url).query)["conversation_signature"][0]
    registration = await stack.register(conversation_id, eleven_id, session_url=signed_url)
    assert registration.status_code == 200, registration.text

    # The agent calls the code tool; cursor-runner calls back; the result is pushed.
    response = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "Fix the login bug"},
        headers={**stack.auth, "X-Request-Id": "req-log-tool"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-log-tool"
    task_id = response.json()["taskId"]
    await stack.elevenlabs.wait_update(eleven_id)
    await stack.runner.wait_callbacks(1)
    assert stack.runner.callbacks[0][0] == 200
    callback_url = stack.runner.received[0]["callbackUrl"]
    callback_secret = parse_qs(urlsplit(callback_url).query)["secret"][0]
    assert len(callback_secret) >= 16

    # A repeated callback carrying the secret in the query string, and one with a wrong secret.
    body = {"success": True, "requestId": task_id, "exitCode": 0, "output": "again"}
    duplicate = await stack.http.post(callback_url, json=body, headers={"X-Request-Id": "req-log-dup"})
    assert duplicate.status_code == 200 and duplicate.json().get("duplicate") is True, duplicate.text
    wrong = await stack.http.post(
        "/callback", json=body, headers={"X-Webhook-Secret": "not-the-secret", "X-Request-Id": "req-log-cb401"}
    )
    assert wrong.status_code == 401

    # A webhook with a wrong secret (a secret-lookalike, to check it is not echoed) and a bad request.
    unauthorized = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "x"},
        headers={"X-Webhook-Secret": stack.webhook_secret[:-2] + "zz", "X-Request-Id": "req-log-401"},
    )
    assert unauthorized.status_code == 401
    bad = await stack.http.post(
        "/agent-tools",
        content=b'{"prompt": ',
        headers={**stack.auth, "Content-Type": "application/json", "X-Request-Id": "req-log-400"},
    )
    assert bad.status_code == 400
    await voice.close()

    async def last_request_logged() -> bool:
        records = captured.records()
        return any(r["event"] == events.HTTP_REQUEST and r.get("requestId") == "req-log-400" for r in records)

    await eventually(last_request_logged, timeout=5)
    records = captured.records()
    seen = {r["event"] for r in records}
    expected = {
        events.HTTP_REQUEST,
        events.SESSION_REGISTERED,
        events.SIGNED_URL_ISSUED,
        events.WEBHOOK_RECEIVED,
        events.TASK_CREATED,
        events.DISPATCH_SUCCEEDED,
        events.CALLBACK_ACCEPTED,
        events.CALLBACK_DUPLICATE,
        events.CALLBACK_UNAUTHORIZED,
        events.DELIVERY_PUSHED,
        events.WEBHOOK_UNAUTHORIZED,
        events.HTTP_BAD_REQUEST,
    }
    assert expected <= seen, f"missing events: {sorted(expected - seen)}"
    all_events = {v for k, v in vars(events).items() if k.isupper() and isinstance(v, str)}
    assert seen <= all_events, f"events not defined in events.py: {sorted(seen - all_events)}"

    # Every line of the tool call carries its request id; the task lines carry the ids too.
    tool_lines = [r for r in records if r.get("requestId") == "req-log-tool"]
    assert {events.WEBHOOK_RECEIVED, events.TASK_CREATED, events.DISPATCH_SUCCEEDED, events.HTTP_REQUEST} <= {
        r["event"] for r in tool_lines
    }
    access = _first(records, events.HTTP_REQUEST, requestId="req-log-tool")
    assert access["path"] == "/agent-tools" and access["status"] == 200 and access["method"] == "POST"
    assert isinstance(access["durationMs"], int | float)
    for event in (events.TASK_CREATED, events.DISPATCH_SUCCEEDED):
        line = _first(records, event, requestId="req-log-tool")
        assert line["taskId"] == task_id and line["conversationId"] == conversation_id, line
    for record in records:
        if record["event"].split(".")[0] in ("webhook", "task", "dispatch", "callback", "http"):
            assert record.get("requestId"), record
    assert _first(records, events.WEBHOOK_UNAUTHORIZED)["requestId"] == "req-log-401"
    assert _first(records, events.HTTP_BAD_REQUEST, requestId="req-log-400")["status"] == 400
    assert _first(records, events.HTTP_REQUEST, requestId="req-log-401")["status"] == 401

    # Callback lines carry the task id (and the request's own id).
    for record in records:
        if record["event"].startswith("callback."):
            assert record.get("taskId") == task_id, record
    accepted = _first(records, events.CALLBACK_ACCEPTED, taskId=task_id)
    assert accepted["conversationId"] == conversation_id
    assert _first(records, events.CALLBACK_DUPLICATE)["requestId"] == "req-log-dup"
    assert _first(records, events.CALLBACK_UNAUTHORIZED)["requestId"] == "req-log-cb401"
    assert _first(records, events.DELIVERY_PUSHED)["taskId"] == task_id
    callback_access = [r for r in records if r["event"] == events.HTTP_REQUEST and r.get("path") == "/callback"]
    assert callback_access and all(r.get("taskId") == task_id for r in callback_access), callback_access

    # No secret anywhere: not in stdout, not in stderr, not in any response body.
    output = captured.out + captured.err
    secrets = {
        "webhook secret": stack.webhook_secret,
        "cursor-runner secret": stack.runner_secret,
        "ElevenLabs API key": stack.api_key,
        "per-task callback secret": callback_secret,
        "the wrong secret presented": stack.webhook_secret[:-2] + "zz",
    }
    for name, value in secrets.items():
        assert value not in output, f"{name} appears in the logs"
    assert signature not in output, "the signed URL's signature appears in the logs"
    assert len(bodies) >= 8
    responses_seen = [*bodies, *(orjson.dumps(b).decode() for _, b in stack.runner.callbacks)]
    for name, value in secrets.items():
        for text in responses_seen:
            assert value not in text, f"{name} appears in a response body: {text[:300]}"


# --- the redactor ---------------------------------------------------------------------------------

SECRET = "s3cr3t-value-123"


def test_redactor_scrubs_configured_secret_values_anywhere() -> None:
    redactor = Redactor([SECRET, "", "ab"])
    assert redactor.scrub(f"presented {SECRET} here") == f"presented {REDACTED} here"
    assert redactor.scrub(["x", f"a{SECRET}b", ("t", SECRET)]) == ["x", f"a{REDACTED}b", ["t", REDACTED]]
    assert redactor.scrub({"detail": {"inner": [SECRET]}}) == {"detail": {"inner": [REDACTED]}}
    assert redactor.scrub(42) == 42 and redactor.scrub(None) is None and redactor.scrub(True) is True
    # Empty and very short "secrets" do not turn every log line into [REDACTED].
    assert redactor.scrub("about a cab") == "about a cab"


@pytest.mark.parametrize(
    "key",
    [
        "secret",
        "webhookSecret",
        "X-Webhook-Secret",
        "token",
        "tokenHash",
        "api_key",
        "apiKey",
        "xi-api-key",
        "Authorization",
        "password",
        "signature",
    ],
)
def test_redactor_hides_values_of_secret_looking_keys(key: str) -> None:
    redactor = Redactor([])
    event = redactor(None, "info", {"event": "x", key: "harmless-looking", "nested": {key: {"deep": 1}}})
    assert event[key] == REDACTED
    assert event["nested"][key] == REDACTED
    assert event["event"] == "x"


def test_redactor_keeps_ordinary_keys() -> None:
    event = Redactor([])(None, "info", {"event": "x", "taskId": "t-1", "status": 200, "conversationId": "c"})
    assert event == {"event": "x", "taskId": "t-1", "status": 200, "conversationId": "c"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "calling http://elevenlabs-agent:3004/callback?secret=abcDEF123 now",
            f"calling http://elevenlabs-agent:3004/callback?{REDACTED} now",
        ),
        (
            "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a&conversation_signature=sig123",
            f"wss://api.elevenlabs.io/v1/convai/conversation?{REDACTED}",
        ),
        ("https://x.example/a?token=1&b=2", f"https://x.example/a?{REDACTED}"),
        ("ws://127.0.0.1:9/push/conv_1", "ws://127.0.0.1:9/push/conv_1"),
        ("no url? here", "no url? here"),
    ],
)
def test_redactor_strips_url_query_strings(text: str, expected: str) -> None:
    assert Redactor([]).scrub(text) == expected
    event = Redactor([])(None, "info", {"event": "x", "url": text})
    assert event["url"] == expected


def test_configured_logger_writes_redacted_json(capsys: pytest.CaptureFixture[str]) -> None:
    agent_logging.configure("info", [SECRET])
    log = structlog.get_logger("test")
    log.info(
        "test.event",
        detail=f"value {SECRET}",
        callbackUrl="http://svc/callback?secret=tok123456",
        headers={"X-Webhook-Secret": "h-value"},
    )
    log.debug("test.debug_hidden")
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [line["event"] for line in lines] == ["test.event"]
    line = lines[0]
    assert line["detail"] == f"value {REDACTED}"
    assert line["callbackUrl"] == f"http://svc/callback?{REDACTED}"
    assert line["headers"] == {"X-Webhook-Secret": REDACTED}
    assert line["level"] == "info" and line["timestamp"]


def test_exception_text_in_logs_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """An exception's message (httpx puts the request URL in it) is rendered into the log line too,
    so it must be scrubbed like every other value."""
    agent_logging.configure("info", [SECRET])
    log = structlog.get_logger("test")
    try:
        raise RuntimeError(f"upstream said {SECRET} for http://svc/callback?secret=tok123456")
    except RuntimeError as exc:
        log.error("test.failed", exc_info=exc)
    out = capsys.readouterr().out
    assert "test.failed" in out
    assert SECRET not in out
    assert "tok123456" not in out


def test_stdlib_logging_goes_through_the_same_json_and_redaction(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    agent_logging.configure("info", [SECRET])
    logging.getLogger("uvicorn.error").warning("peer sent %s via ws://h/x?token=abc999", SECRET)
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    assert SECRET not in lines[0]["event"] and "abc999" not in lines[0]["event"]
    assert lines[0]["level"] == "warning"


def test_stdlib_exception_is_rendered_as_redacted_traceback_text(capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn reports a crashed request through stdlib logging ("Exception in ASGI application"):
    the traceback must reach the JSON line as text an operator can read, scrubbed of secrets."""
    import logging

    agent_logging.configure("info", [SECRET])
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=True)
    out = capsys.readouterr().out
    lines = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    assert len(lines) == 1
    rendered = orjson.dumps(lines[0]).decode()
    assert "Traceback (most recent call last)" in rendered, rendered
    assert "test_logging.py" in rendered, rendered
    assert "<traceback object" not in rendered, rendered
    assert SECRET not in out


# --- event names ----------------------------------------------------------------------------------


def _constants() -> dict[str, str]:
    return {k: v for k, v in vars(events).items() if k.isupper() and not k.startswith("_")}


def test_event_names_are_unique_and_well_formed() -> None:
    constants = _constants()
    assert len(constants) >= 20
    for name, value in constants.items():
        assert isinstance(value, str), name
        assert EVENT_NAME.fullmatch(value), f"{name} = {value!r}"
    values = list(constants.values())
    duplicates = sorted({v for v in values if values.count(v) > 1})
    assert not duplicates, duplicates


def test_every_event_referenced_in_src_exists() -> None:
    constants = _constants()
    referenced: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for name in re.findall(r"\bevents\.([A-Z_]+)\b", path.read_text()):
            referenced.setdefault(name, set()).add(str(path.relative_to(SRC)))
    assert len(referenced) >= 20, referenced  # the grep really found the uses
    missing = {name: sorted(files) for name, files in referenced.items() if name not in constants}
    assert not missing, missing


def test_every_event_is_used_somewhere_in_src() -> None:
    constants = _constants()
    sources = "\n".join(p.read_text() for p in SRC.rglob("*.py") if p.name != "events.py")
    unused = sorted(name for name in constants if not re.search(rf"\bevents\.{name}\b", sources))
    assert not unused, f"event names defined but never logged: {unused}"


def test_console_format_keeps_event_names_and_redacts_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    """LOG_FORMAT=console (what a terminal gets with auto): human lines, same event names, same redaction."""
    secret = "console-secret-" + "x" * 20
    agent_logging.configure("info", [secret], "console")
    agent_logging.get_logger().info(
        events.WEBHOOK_RECEIVED, toolName="code_task", note=f"carries {secret}", callbackUrl="http://h/cb?secret=s3"
    )
    out = capsys.readouterr().out
    assert events.WEBHOOK_RECEIVED in out and "toolName" in out and not out.lstrip().startswith("{")
    assert secret not in out and "s3" not in out and REDACTED in out


def test_auto_format_follows_the_terminal() -> None:
    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    assert agent_logging.wants_console("auto", Stream(True))
    assert not agent_logging.wants_console("auto", Stream(False))
    assert not agent_logging.wants_console("json", Stream(True))
    assert agent_logging.wants_console("console", Stream(False))
