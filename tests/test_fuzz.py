"""Schema-driven and property-based fuzzing (issue 5, hostile input).

Every operation of the service's own OpenAPI document (`GET /openapi.json`) is driven by schemathesis
against the live service over a real socket, with valid (positive) and invalid (negative) inputs. Every
answer must be a documented status with a body and content type that match the document, never a 5xx,
never stack-trace text. After each run, Redis holds only keys of the documented families with valid
ids, and no secret (webhook secret, ElevenLabs API key, cursor-runner secret, per-task callback
tokens) is in any response body, in `/config`, `/metrics` or the logs.

Hypothesis also drives the body parsers directly, `read_json` through HTTP, and hostile ids on every
route that takes one.

Bounded by default (FUZZ_EXAMPLES=25 cases per operation and mode); a long run:
`FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/test_fuzz.py`.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import hypothesis
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.routing import Route

from elevenlabs_agent import events
from elevenlabs_agent import logging as agent_logging
from elevenlabs_agent.errors import ServiceError
from elevenlabs_agent.http.routes import ROUTES
from elevenlabs_agent.limits import ID_PATTERN, MAX_ACK_IDS, MAX_OFFSET, MAX_PAGE, TOOL_NAME_PATTERN, is_valid_id
from elevenlabs_agent.schemas.conversations import RESERVED_CONVERSATION_IDS, parse_message
from elevenlabs_agent.schemas.webhooks import CallbackBody, ToolCall
from elevenlabs_agent.stores import KEY_FAMILIES, aliases, conversations, locks, outbox, ratelimits, sessions, tasks
from tests.conftest import AGENT_ID, Stack, StackFactory
from tests.helpers import BROWSER_IDENTITY, Captured

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
# A long run gets a per-test timeout that grows with it; the bounded run keeps the suite's default.
FUZZ_TIMEOUT = max(180, FUZZ_EXAMPLES * 4)
TRACEBACK_MARKERS = ("Traceback", 'File "')
ELEVEN_ID = "el-fuzz-live"
SSE_PATH = "/agent-conversations/api/{conversation_id}/events"

OPERATIONS = sorted(
    (method, route.path)
    for route in ROUTES
    if isinstance(route, Route)
    for method in (route.methods or ())
    if method != "HEAD"
)

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.negative_data_rejection,
]

# Statuses that count as rejecting invalid input: schemathesis' default list, plus 413 (a value over a
# limit can make the whole body too large). A 5xx fails `not_a_server_error` anyway.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
SCHEMATHESIS_CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The stacks here log to capsys' stream; afterwards, point logging back at the real stdout."""
    yield
    agent_logging.configure("info")


def _settings(max_examples: int = FUZZ_EXAMPLES) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# --- what a run saw -------------------------------------------------------------------------------


@dataclass
class World:
    """Resources that exist before the run, so that generated cases also reach the success paths."""

    conversation_id: str
    tasks: list[tuple[str, str]]  # (task id, its per-task callback secret)
    session_url: str
    push_url: str


@dataclass
class Observed:
    cases: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    bodies: list[str] = field(default_factory=list)
    sse_streams_opened: int = 0

    def record(self, method: str, path: str, status: int, text: str, sent: str) -> None:
        self.cases += 1
        self.statuses[f"{status}"] += 1
        self.bodies.append(text)
        for marker in TRACEBACK_MARKERS:
            # A body may echo what the client sent (a message's content): only new text counts.
            assert marker not in text or marker in sent, f"{method} {path} -> {status}: {text[:500]}"


def _sent_text(kwargs: dict[str, Any]) -> str:
    return repr(kwargs.get("json")) + repr(kwargs.get("data")) + repr(kwargs.get("params")) + kwargs["url"]


# --- the schemathesis run -------------------------------------------------------------------------


class Fuzzer:
    """Runs one operation's positive and negative cases (in a worker thread, synchronously: the
    service keeps serving on the test's event loop meanwhile)."""

    def __init__(self, stack: Stack, world: World, schema: Any, method: str, path: str) -> None:
        self.stack = stack
        self.world = world
        self.base_url = stack.service.url
        self.operation = schema[path][method]
        self.method = method
        self.path = path
        self.observed = Observed()
        self.session = requests.Session()
        definition = self.operation.definition.raw
        self.has_inputs = any(definition.get(k) for k in ("parameters", "requestBody", "security"))

    def run(self) -> Observed:
        modes = [GenerationMode.POSITIVE]
        if self.has_inputs:
            modes.append(GenerationMode.NEGATIVE)
        try:
            for mode in modes:
                self.run_mode(mode)
        finally:
            self.session.close()
        return self.observed

    def run_mode(self, mode: GenerationMode) -> None:
        @_settings()
        @hypothesis.given(case=self.operation.as_strategy(generation_mode=mode), data=st.data())
        def one_case(case: Any, data: st.DataObject) -> None:
            self.exercise(case, data, mode)

        one_case()

    def exercise(self, case: Any, data: st.DataObject, mode: GenerationMode) -> None:
        # `/agent-conversations/api/list` is another route (its own run covers it).
        # A path parameter that is `list`/`new` or holds a '/' addresses another route (or Starlette's
        # trailing-slash redirect): those routes have runs of their own.
        for value in (case.path_parameters or {}).values():
            hypothesis.assume(not (isinstance(value, str) and (value in RESERVED_CONVERSATION_IDS or "/" in value)))
        headers = self.steer(case, data, positive=mode == GenerationMode.POSITIVE)
        kwargs = case.as_transport_kwargs(base_url=self.base_url, headers=headers)
        sent = _sent_text(kwargs)
        if self.path == SSE_PATH:
            self.exercise_stream(case, kwargs, sent)
            return
        response = case.call(base_url=self.base_url, session=self.session, headers=headers, timeout=15)
        self.observed.record(self.method, self.path, response.status_code, response.text, sent)
        case.validate_response(response, checks=CHECKS)

    def exercise_stream(self, case: Any, kwargs: dict[str, Any], sent: str) -> None:
        """The SSE stream never ends: take its first chunk, then hang up (bounded by the read timeout)."""
        kwargs.pop("cookies", None)
        with self.session.request(**kwargs, stream=True, timeout=(5, 5)) as response:
            if response.status_code == 200:
                assert response.headers["content-type"].startswith("text/event-stream"), response.headers
                first = next(response.iter_content(chunk_size=None))
                assert first.startswith(b"retry: 3000\n\n"), first
                self.observed.sse_streams_opened += 1
                self.observed.record(self.method, self.path, 200, first.decode(), sent)
                return
            text = response.text
        self.observed.record(self.method, self.path, response.status_code, text, sent)
        case.validate_response(response, checks=CHECKS)

    def steer(self, case: Any, data: st.DataObject, *, positive: bool) -> dict[str, str]:
        """Point some positive cases at resources that exist (a live conversation, real tasks with their
        secrets), so that the run reaches the success paths and not only "unknown conversation". Negative
        cases are left as generated: steering could turn them valid. Returns headers to send."""
        headers: dict[str, str] = {}
        w = self.world
        body = case.body if isinstance(case.body, dict) else None
        if self.path.startswith("/agent-tools"):
            # The webhook needs its secret; some cases go without it, or with a wrong one (401).
            auth = data.draw(st.sampled_from(["header", "header", "bearer", "none", "wrong"]), label="auth")
            for name in ("X-Webhook-Secret", "Authorization"):
                (case.headers or {}).pop(name, None)
            if auth == "header":
                headers["X-Webhook-Secret"] = self.stack.webhook_secret
            elif auth == "bearer":
                headers["Authorization"] = f"Bearer {self.stack.webhook_secret}"
            elif auth == "wrong":
                headers["X-Webhook-Secret"] = self.stack.webhook_secret[:-3] + "xyz"
        if not positive:
            return headers
        if "conversation_id" in (case.path_parameters or {}) and data.draw(st.booleans(), label="live conv"):
            case.path_parameters["conversation_id"] = w.conversation_id
            if self.path == SSE_PATH and data.draw(st.booleans(), label="open a stream"):
                # Generated identities are mostly refused (401): some cases must reach an open stream.
                case.query = {}
                case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() == "accept"}
                headers.update(BROWSER_IDENTITY)
        if body is None:
            return headers
        task_id, token = data.draw(st.sampled_from(w.tasks), label="task")
        if self.path.startswith("/agent-tools"):
            choice = data.draw(st.sampled_from(["as generated", "live", "status"]), label="tool steering")
            if choice == "live":
                body["conversation_id"] = ELEVEN_ID
            elif choice == "status":
                body["tool_name"] = "get_task_status"
                args = body["tool_args"] if isinstance(body.get("tool_args"), dict) else body
                if data.draw(st.booleans(), label="by task id"):
                    args["task_id"] = task_id
                else:
                    body["conversation_id"] = ELEVEN_ID
        elif self.path == "/callback" and data.draw(st.booleans(), label="real task"):
            body["requestId"] = task_id
            case.query = {k: v for k, v in (case.query or {}).items() if k != "secret"}
            for name in ("X-Webhook-Secret", "X-Cursor-Runner-Secret", "Authorization"):
                (case.headers or {}).pop(name, None)
            headers["X-Cursor-Runner-Secret"] = token
        elif self.path.endswith("/session") and data.draw(st.booleans(), label="allowed urls"):
            body["sessionUrl"] = w.session_url
            body["pushUrl"] = data.draw(st.sampled_from([None, w.push_url]), label="push")
        elif self.path.endswith("/events/ack") and data.draw(st.booleans(), label="real tasks"):
            body["taskIds"] = [t for t, _ in w.tasks]
        return headers


async def seed(stack: Stack) -> World:
    """A conversation with a registered relay session, tasks dispatched for it (one already called
    back, so its result waits in the outbox), as the browser, ElevenLabs and cursor-runner make them."""
    conversation_id = await stack.create_conversation(agentId=AGENT_ID)
    session_url = f"{stack.elevenlabs_server.ws_url}/v1/convai/conversation?agent_id={AGENT_ID}"
    registration = await stack.http.post(
        f"/agent-conversations/api/{conversation_id}/session",
        json={"sessionUrl": session_url, "metadata": {"agentId": AGENT_ID, "elevenConversationId": ELEVEN_ID}},
    )
    assert registration.status_code == 200, registration.text
    stack.runner.callback_kind = "none"
    for n in range(3):
        response = await stack.call_tool({"conversation_id": ELEVEN_ID, "prompt": f"seed task {n}"})
        assert response.status_code == 200 and response.json()["success"], response.text
    stack.runner.callback_kind = "completion"
    world_tasks = [(r["id"], parse_qs(urlsplit(r["callbackUrl"]).query)["secret"][0]) for r in stack.runner.received]
    first, token = world_tasks[0]
    done = await stack.http.post(
        "/callback", json={"success": True, "requestId": first, "exitCode": 0}, headers={"X-Webhook-Secret": token}
    )
    assert done.status_code == 200, done.text
    return World(conversation_id, world_tasks, session_url, f"{stack.elevenlabs_server.ws_url}/push/{ELEVEN_ID}")


# --- what must hold after any run -----------------------------------------------------------------


def documented_key(key: str) -> bool:
    """Is `key` one of the families in stores.KEY_FAMILIES, with a valid id in it?"""
    if key in conversations.INDEX_KEYS:
        return True
    for prefix in (sessions.KEY_PREFIX, tasks.KEY_PREFIX, conversations.KEY_PREFIX, aliases.KEY_PREFIX):
        if key.startswith(prefix):
            return is_valid_id(key.removeprefix(prefix))
    for prefix in (outbox.STREAM_PREFIX, outbox.PENDING_PREFIX):
        if key.startswith(prefix):
            inner = key.removeprefix(prefix)
            return inner.startswith("{") and inner.endswith("}") and is_valid_id(inner[1:-1])
    if key.startswith(ratelimits.KEY_PREFIX):
        # the identity is a hash (access.Identity), never a user name or token
        return (
            re.fullmatch(r"(user|token):[0-9a-f]{16}|none:anonymous", key.removeprefix(ratelimits.KEY_PREFIX))
            is not None
        )
    return key.startswith(locks.KEY_PREFIX) and is_valid_id(key.removeprefix(locks.KEY_PREFIX))


def test_documented_key_covers_every_family() -> None:
    """The checker above knows every family the stores declare (a new family must be added to it)."""
    examples = {
        "sessions": sessions.key("c1"),
        "tasks": tasks.key("t1"),
        "conversations": conversations.key("c1"),
        "conversation_index": conversations.INDEX_KEY,
        "conversation_index_last_accessed": conversations.ACCESSED_INDEX_KEY,
        "conversation_index_message_count": conversations.COUNT_INDEX_KEY,
        "aliases": aliases.key("e1"),
        "event_streams": outbox.stream_key("c1"),
        "pending_results": outbox.pending_key("c1"),
        "locks": locks.KEY_PREFIX + "purge",
        "rate_limits": ratelimits.KEY_PREFIX + "user:0123456789abcdef",
    }
    assert {f.name for f in KEY_FAMILIES} == set(examples)
    assert all(documented_key(k) for k in examples.values())
    assert not any(documented_key(k) for k in ("cursor_task:a*b", "elevenlabs:events:c1", "elevenlabs:x:y", "other"))


async def assert_keyspace_documented(stack: Stack) -> int:
    keys = [key async for key in stack.redis.scan_iter(count=1000)]
    stray = [key for key in keys if not documented_key(key)]
    assert not stray, f"keys outside the documented families or with an invalid id: {stray[:20]}"
    return len(keys)


async def assert_no_secret_anywhere(stack: Stack, captured: Captured, bodies: list[str]) -> None:
    """No secret in any response body, in /config, /metrics, or the logs."""
    config = await stack.http.get("/config")
    metrics = await stack.http.get("/metrics")
    assert config.status_code == 200 and metrics.status_code == 200
    tokens = [parse_qs(urlsplit(r["callbackUrl"]).query)["secret"][0] for r in stack.runner.received]
    secrets = {
        "webhook secret": stack.webhook_secret,
        "cursor-runner secret": stack.runner_secret,
        "ElevenLabs API key": stack.api_key,
        **{f"callback token of task {r['id']}": t for r, t in zip(stack.runner.received, tokens, strict=True)},
    }
    records = captured.records()  # every log line is JSON with an event name
    logs = captured.out + captured.err
    texts = {"logs": logs, "/config": config.text, "/metrics": metrics.text}
    haystack = "\n".join(bodies)
    for name, value in secrets.items():
        assert value not in haystack, f"{name} appears in a response body"
        for where, text in texts.items():
            assert value not in text, f"{name} appears in {where}"
    unhandled = [r for r in records if r["event"] == events.HTTP_UNHANDLED_ERROR]
    assert not unhandled, unhandled[:3]


# --- the schema itself ----------------------------------------------------------------------------


async def test_openapi_documents_every_route_and_method(make_stack: StackFactory) -> None:
    stack = await make_stack()
    response = await stack.http.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["openapi"].startswith("3.1")
    documented = sorted((m.upper(), p) for p, item in document["paths"].items() for m in item)
    assert documented == OPERATIONS
    for (method, path), operation in ((k, document["paths"][k[1]][k[0].lower()]) for k in OPERATIONS):
        statuses = set(operation["responses"])
        assert statuses, (method, path)
        if method == "POST":
            assert {"400", "413", "415"} <= statuses, (method, path)
    schemas = document["components"]["schemas"]
    # The limits come from the code that enforces them.
    assert schemas["Id"]["pattern"] == ID_PATTERN
    assert schemas["EventsAck"]["properties"]["taskIds"]["maxItems"] == MAX_ACK_IDS
    paging = {p["name"]: p["schema"] for p in document["paths"]["/agent-conversations/api/list"]["get"]["parameters"]}
    assert (paging["limit"]["maximum"], paging["offset"]["maximum"]) == (MAX_PAGE, MAX_OFFSET)
    assert schemas["NewMessage"]["properties"]["content"]["maxLength"] == 100_000
    assert str(stack.settings.max_body_bytes) in document["components"]["responses"]["PayloadTooLarge"]["description"]
    # It loads as a schema schemathesis can drive (this validates it as OpenAPI 3.1).
    schemathesis.openapi.from_dict(document).validate()


async def test_openapi_is_behind_the_feature_flag(make_stack: StackFactory) -> None:
    stack = await make_stack(elevenlabs_agent_enabled=False)
    response = await stack.http.get("/openapi.json")
    assert response.status_code == 503 and response.json()["success"] is False


# --- schemathesis against the live service --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(FUZZ_TIMEOUT)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
async def test_fuzz_operation(
    capsys: pytest.CaptureFixture[str],
    make_stack: StackFactory,
    request: pytest.FixtureRequest,
    method: str,
    path: str,
) -> None:
    captured = Captured(capsys)  # before the stack, so that logging writes to capsys' stream
    stack = await make_stack()
    world = await seed(stack)
    schema = schemathesis.openapi.from_dict((await stack.http.get("/openapi.json")).json(), config=SCHEMATHESIS_CONFIG)
    fuzzer = Fuzzer(stack, world, schema, method, path)
    started = time.monotonic()
    observed = await asyncio.to_thread(fuzzer.run)
    elapsed = time.monotonic() - started
    await stack.runner.settled()  # the callbacks the fake cursor-runner still sends land
    await stack.deliveries_settled()

    # An operation without inputs has one distinct case; every other one gets FUZZ_EXAMPLES per mode.
    assert observed.cases >= (FUZZ_EXAMPLES if fuzzer.has_inputs else 1), observed.statuses
    if path == SSE_PATH:
        assert observed.sse_streams_opened > 0, "no case reached an open event stream"
    key_count = await assert_keyspace_documented(stack)
    await assert_no_secret_anywhere(stack, captured, observed.bodies)
    request.node.user_properties.append(("fuzz_cases", observed.cases))
    if request.config.get_verbosity() > 0:
        with capsys.disabled():
            print(
                f"\n  fuzz {method} {path}: {observed.cases} cases in {elapsed:.1f}s, "
                f"statuses {dict(sorted(observed.statuses.items()))}, {key_count} keys"
            )


# --- the parsers, directly ------------------------------------------------------------------------

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=40)
)
HOSTILE_TEXT = st.sampled_from(["", " ", "*", "?", "[a]", "a:b", "{x}", "a b", "a\nb", "x" * 200, "ok_id", "\x00"])


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)


JSON_VALUES = st.recursive(JSON_SCALARS | HOSTILE_TEXT, _containers, max_leaves=20)
TOOL_KEYS = ["tool_name", "tool_args", "conversation_id", "session_id", "agent_id", "prompt", "task", "task_id"]
CALLBACK_KEYS = ["requestId", "success", "exitCode", "output", "error", "duration", "repository", "command"]


def _bodies(keys: list[str]) -> st.SearchStrategy[Any]:
    known = st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), JSON_VALUES, max_size=8)
    return known | JSON_VALUES


def _only_service_errors(parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except ServiceError as exc:  # every one of them maps to a 4xx (http/errors.py)
        assert type(exc).__name__ == "InvalidInput", exc
        return None


@_settings(max_examples=FUZZ_EXAMPLES * 4)
@hypothesis.given(body=_bodies(TOOL_KEYS), path_tool=st.none() | HOSTILE_TEXT | st.text(max_size=70))
def test_tool_call_parse_accepts_or_rejects_with_400_only(body: Any, path_tool: str | None) -> None:
    call = _only_service_errors(lambda: ToolCall.parse(body, path_tool))
    if call is None:
        return
    assert re.fullmatch(TOOL_NAME_PATTERN, call.tool_name)
    named = body.get("tool_name")
    assert call.tool_name == (named if named not in (None, "") else path_tool or "code_task")
    for value in (call.conversation_id, call.session_id, call.agent_id):
        assert value is None or is_valid_id(value)
    assert isinstance(call.args, dict)
    prompt = _only_service_errors(call.prompt)
    assert prompt is None or (isinstance(prompt, str) and 0 < len(prompt) <= 50_000)


@_settings(max_examples=FUZZ_EXAMPLES * 4)
@hypothesis.given(body=_bodies(CALLBACK_KEYS))
def test_callback_body_parse_accepts_or_rejects_with_400_only(body: Any) -> None:
    parsed = _only_service_errors(lambda: CallbackBody.parse(body))
    if parsed is None:
        return
    assert is_valid_id(parsed.request_id)
    assert set(parsed.result) <= set(body)
    exit_code = body.get("exitCode")
    assert parsed.failed == (body["success"] is False or exit_code not in (None, 0))


@_settings(max_examples=FUZZ_EXAMPLES * 4)
@hypothesis.given(body=_bodies(["role", "content", "source", "status", "toolName", "toolArgs", "toolOutput"]))
def test_message_parse_accepts_or_rejects_with_400_only(body: Any) -> None:
    message = _only_service_errors(lambda: parse_message(body))
    if message is not None:
        assert set(message) <= {"role", "content", "source", "status", "toolName", "toolArgs", "toolOutput"}


BAD_ID_CHARS = ["*", "?", "[", "]", ":", "{", "}", " ", "\n", "\r", "\t", "/", "\\", "\x00", "é", '"', "'"]


def hostile_ids() -> st.SearchStrategy[str]:
    """Ids that must never become part of a key name: a forbidden character somewhere, a leading
    '_', '.' or '-', or too long."""
    safe = st.text(alphabet="abcXYZ019_.-", max_size=20)
    with_bad_char = st.builds(lambda a, bad, b: "a" + a + bad + b, safe, st.sampled_from(BAD_ID_CHARS), safe)
    too_long = (st.integers(min_value=129, max_value=3000) | st.just(100_000)).map(lambda n: "a" * n)
    leading = st.sampled_from(["_", ".", "-"]).map(lambda c: c + "abc")
    # "" is not here: for several optional ids an empty string means "absent" (documented).
    return with_bad_char | too_long | leading


@_settings(max_examples=FUZZ_EXAMPLES * 4)
@hypothesis.given(value=st.text() | hostile_ids() | st.just(""))
def test_is_valid_id_accepts_only_the_safe_charset(value: str) -> None:
    if is_valid_id(value):
        assert 1 <= len(value) <= 128 and value[0].isalnum()
        assert not set(value) & set("*?[]:{} \n\r\t/\\\x00\"'")
        assert value.isascii()


@_settings(max_examples=FUZZ_EXAMPLES * 4)
@hypothesis.given(value=hostile_ids())
def test_hostile_ids_are_invalid(value: str) -> None:
    assert not is_valid_id(value)


def test_is_valid_id_rejects_non_strings() -> None:
    for value in (None, 1, 1.5, True, ["a"], {"a": 1}, b"abc"):
        assert not is_valid_id(value)


# --- read_json and hostile ids, through HTTP ------------------------------------------------------

BODY_ROUTES = [
    "/agent-tools",
    "/callback",
    "/agent-conversations/api/new",
    "/agent-conversations/api/{cid}/message",
    "/agent-conversations/api/{cid}/session",
    "/agent-conversations/api/{cid}/events/ack",
]
RAW_BODIES = (
    st.binary(max_size=200)
    | JSON_VALUES.map(orjson.dumps)
    | st.sampled_from([b"", b"   ", b"{", b'{"a":NaN}', b"[" * 5000 + b"]" * 5000, b'{"a":' * 40 + b"1" + b"}" * 40])
)
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/plain",
        "application/vnd.api+json",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "",
        "*/*",
    ]
)


def _json_error(response: requests.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["success"] is False and isinstance(body["error"], str) and body["error"], body
    return dict(body)


async def test_read_json_answers_any_bytes_with_json_4xx_or_success(
    capsys: pytest.CaptureFixture[str], make_stack: StackFactory
) -> None:
    captured = Captured(capsys)
    stack = await make_stack()
    world = await seed(stack)
    base = stack.service.url
    bodies: list[str] = []

    def run() -> None:
        with requests.Session() as session:

            @_settings(max_examples=FUZZ_EXAMPLES * 4)
            @hypothesis.given(route=st.sampled_from(BODY_ROUTES), raw=RAW_BODIES, content_type=CONTENT_TYPES)
            def one(route: str, raw: bytes, content_type: str | None) -> None:
                headers = {"X-Webhook-Secret": stack.webhook_secret, **BROWSER_IDENTITY}
                if content_type is not None:
                    headers["Content-Type"] = content_type
                url = base + route.replace("{cid}", world.conversation_id)
                response = session.post(url, data=raw, headers=headers, timeout=15)
                bodies.append(response.text)
                assert response.status_code < 500, (response.status_code, response.text[:300])
                for marker in TRACEBACK_MARKERS:
                    assert marker not in response.text, response.text[:300]
                if response.status_code >= 400:
                    _json_error(response)
                media = (content_type or "").split(";")[0].strip().lower()
                if raw.strip() and media != "application/json" and not media.endswith("+json"):
                    assert response.status_code == 415, (response.status_code, response.text[:300])

            one()

    await asyncio.to_thread(run)
    await assert_keyspace_documented(stack)
    await assert_no_secret_anywhere(stack, captured, bodies)


def _id_requests(bad: str, world: World) -> list[tuple[str, str, dict[str, Any] | None, dict[str, str] | None]]:
    """(method, path, JSON body, query) of every route that takes an id, with `bad` put in that id."""
    api = "/agent-conversations/api"
    cid = world.conversation_id
    task_id = world.tasks[0][0]
    session = {"sessionUrl": world.session_url}
    in_body: list[tuple[str, str, dict[str, Any] | None, dict[str, str] | None]] = [
        ("POST", f"{api}/{cid}/events/ack", {"taskIds": [task_id, bad]}, None),
        ("POST", f"{api}/new", {"conversationId": bad}, None),
        ("POST", f"{api}/{cid}/session", {**session, "sessionId": bad}, None),
        ("POST", f"{api}/{cid}/session", {**session, "agentSessionId": bad}, None),
        ("POST", f"{api}/{cid}/session", {**session, "metadata": {"elevenConversationId": bad}}, None),
        ("POST", "/agent-tools", {"conversation_id": bad, "prompt": "x"}, None),
        ("POST", "/agent-tools", {"conversation_id": ELEVEN_ID, "session_id": bad, "prompt": "x"}, None),
        ("POST", "/agent-tools", {"conversation_id": ELEVEN_ID, "agent_id": bad, "prompt": "x"}, None),
        ("POST", "/agent-tools", {"tool_name": "get_task_status", "task_id": bad}, None),
        ("POST", "/agent-tools", {"tool_name": "get_task_status", "tool_args": {"taskId": bad}}, None),
        ("POST", "/callback", {"success": True, "requestId": bad}, None),
    ]
    if len(bad) > 4000:  # a request line that long is refused by the HTTP server before any route
        return in_body
    path_id = quote(bad, safe="")
    in_tool_path = [] if re.fullmatch(TOOL_NAME_PATTERN, bad) else [f"/agent-tools/{path_id}"]
    return [
        *in_body,
        ("GET", "/signed-url", None, {"agentId": bad}),
        *(("POST", path, {"conversation_id": ELEVEN_ID, "prompt": "x"}, None) for path in in_tool_path),
        ("GET", f"{api}/{path_id}", None, None),
        ("POST", f"{api}/{path_id}/message", {"role": "user", "content": "hi"}, None),
        ("POST", f"{api}/{path_id}/session", session, None),
        ("GET", f"{api}/{path_id}/events", None, None),
        ("POST", f"{api}/{path_id}/events/ack", {"taskIds": [task_id]}, None),
    ]


async def test_hostile_ids_are_400_on_every_route_and_never_reach_redis(
    capsys: pytest.CaptureFixture[str], make_stack: StackFactory
) -> None:
    captured = Captured(capsys)
    stack = await make_stack()
    world = await seed(stack)
    base = stack.service.url
    bodies: list[str] = []
    seen_routes: set[str] = set()

    def run() -> None:
        with requests.Session() as session:

            @_settings(max_examples=FUZZ_EXAMPLES)
            @hypothesis.given(bad=hostile_ids())
            def one(bad: str) -> None:
                for method, path, body, query in _id_requests(bad, world):
                    headers = {"X-Webhook-Secret": stack.webhook_secret, **BROWSER_IDENTITY}
                    response = session.request(
                        method,
                        base + path,
                        json=body,
                        params=query,
                        headers=headers,
                        timeout=(5, 5),
                        allow_redirects=False,
                    )
                    bodies.append(response.text)
                    # A '/' in a path segment makes it another path: no route, or one without this method.
                    expected = (400, 404, 405) if "/" in bad and quote(bad, safe="") in path else (400,)
                    where = f"{method} {path[:200]} {repr(body)[:200]} -> {response.status_code}"
                    assert response.status_code in expected, f"{where}: {response.text[:300]}"
                    _json_error(response)
                    seen_routes.add(f"{method} {path.replace(quote(bad, safe=''), '{id}')}")

            one()

    await asyncio.to_thread(run)
    assert len(seen_routes) > 10
    await assert_keyspace_documented(stack)
    await assert_no_secret_anywhere(stack, captured, bodies)
