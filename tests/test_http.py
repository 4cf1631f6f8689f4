"""The HTTP surface (SPEC §3): operational routes, signed URLs, the feature flag, hostile input, Redis
outages and CORS, all over real sockets against the real service."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from elevenlabs_agent.redis.server import RedisServer, free_port
from tests.conftest import AGENT_ID, Stack, StackFactory, eventually
from tests.helpers import assert_json_error

CONVERSATION = "conv-http-test"

# Every POST route, with `{cid}` standing for an existing conversation of ours.
POST_ROUTES = [
    "/agent-tools",
    "/agent-tools/code_task",
    "/callback",
    "/agent-conversations/api/new",
    "/agent-conversations/api/{cid}/message",
    "/agent-conversations/api/{cid}/session",
    "/agent-conversations/api/{cid}/events/ack",
]


async def prepare(stack: Stack) -> str:
    """An existing conversation for the `{cid}` routes."""
    return await stack.create_conversation(conversationId=CONVERSATION, agentId=AGENT_ID)


def tool_body(conversation_id: str = "conv_eleven_1", prompt: str = "Fix the login bug") -> dict[str, Any]:
    return {"tool_name": "code_task", "conversation_id": conversation_id, "prompt": prompt}


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text exposition (0 if absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name + "{"):
            continue
        sample, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', sample))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


# --- operational routes ---------------------------------------------------------------------------


async def test_health_reports_ok_with_redis_connected(stack: Stack) -> None:
    response = await stack.http.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "ok"
    assert body["service"] == "elevenlabs-agent"
    assert body["redis"] == "connected"


async def test_ready_answers_health_json_with_checks(stack: Stack) -> None:
    response = await stack.http.get("/ready")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/health+json")
    body = response.json()
    assert body["status"] == "pass"
    assert isinstance(body["checks"], dict) and body["checks"]
    redis_checks = [checks for name, checks in body["checks"].items() if "redis" in name]
    assert redis_checks, body["checks"]
    assert all(check["status"] == "pass" for checks in body["checks"].values() for check in checks)


async def test_metrics_exposes_prometheus_text_counting_requests(stack: Stack) -> None:
    before = metric_value(
        (await stack.http.get("/metrics")).text,
        "elevenlabs_agent_http_requests_total",
        route="/config",
        method="GET",
        status="200",
    )
    assert (await stack.http.get("/config")).status_code == 200

    async def counted() -> bool:
        response = await stack.http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "# TYPE elevenlabs_agent_http_requests_total counter" in response.text
        after = metric_value(
            response.text, "elevenlabs_agent_http_requests_total", route="/config", method="GET", status="200"
        )
        return after == before + 1

    await eventually(counted, timeout=5)


async def test_config_shows_configuration_but_no_secret_values(stack: Stack) -> None:
    response = await stack.http.get("/config")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    config = body["config"]
    assert config["webhookSecretConfigured"] is True
    assert config["hasApiKey"] is True
    assert config["agentId"] == AGENT_ID
    assert config["cursorRunnerUrl"] == stack.settings.cursor_runner_url
    assert config["agentUrl"] == stack.service.url
    assert config["redisUrl"] == "configured"
    for secret in (stack.webhook_secret, stack.api_key, stack.runner_secret):
        assert secret not in response.text


async def test_config_without_webhook_secret_says_so(make_stack: StackFactory) -> None:
    stack = await make_stack(webhook_secret=None, elevenlabs_api_key=None)
    config = (await stack.http.get("/config")).json()["config"]
    assert config["webhookSecretConfigured"] is False
    assert config["hasApiKey"] is False


async def test_config_health_ok_when_dependencies_answer(stack: Stack) -> None:
    response = await stack.http.get("/config/health")
    assert response.status_code == 200
    body = response.json()
    assert body["service"] == "elevenlabs-agent"
    assert body["status"] == "ok"
    # SPEC §3.1: plain strings (the front end renders them as text); the detail is in `checks`.
    assert body["dependencies"] == {"redis": "connected", "cursorRunner": "connected"}
    assert body["checks"]["redis"]["status"] == "connected" and body["checks"]["redis"]["latencyMs"] >= 0
    assert body["checks"]["cursorRunner"] == {"status": "connected", "detail": "HTTP 200"}
    assert body["timestamp"]


async def test_config_health_degraded_when_cursor_runner_is_down(make_stack: StackFactory) -> None:
    stack = await make_stack(cursor_runner_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    response = await stack.http.get("/config/health")
    assert time.monotonic() - started < 5
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["dependencies"] == {"redis": "connected", "cursorRunner": "disconnected"}
    assert body["checks"]["cursorRunner"]["status"] == "disconnected"


# --- signed URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{"agentId": AGENT_ID}, {}], ids=["explicit-agent", "default-agent"])
async def test_signed_url_issued_with_expiry_fifteen_minutes_ahead(stack: Stack, params: dict[str, str]) -> None:
    response = await stack.http.get("/signed-url", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["signedUrl"].startswith(f"{stack.elevenlabs_server.ws_url}/v1/convai/conversation?agent_id={AGENT_ID}")
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert expires.tzinfo is not None
    ahead = expires - datetime.now(UTC)
    assert timedelta(minutes=14) < ahead <= timedelta(minutes=15, seconds=5), ahead
    assert stack.api_key not in response.text


async def test_signed_url_for_foreign_agent_is_forbidden(stack: Stack) -> None:
    response = await stack.http.get("/signed-url", params={"agentId": "agent_someone_else"})
    assert_json_error(response, 403)
    assert stack.elevenlabs.signed_url_requests == 0


async def test_signed_url_with_malformed_agent_id_is_bad_request(stack: Stack) -> None:
    response = await stack.http.get("/signed-url", params={"agentId": "../../v1/admin?x=*"})
    assert_json_error(response, 400)
    assert stack.elevenlabs.signed_url_requests == 0


async def test_signed_url_without_api_key_is_unavailable(make_stack: StackFactory) -> None:
    stack = await make_stack(elevenlabs_api_key=None)
    response = await stack.http.get("/signed-url", params={"agentId": AGENT_ID})
    assert_json_error(response, 503)


async def test_signed_url_upstream_error_is_bad_gateway(stack: Stack) -> None:
    stack.elevenlabs.signed_url_status = 500
    response = await stack.http.get("/signed-url", params={"agentId": AGENT_ID})
    assert_json_error(response, 502)
    assert stack.elevenlabs.signed_url_requests >= 1


async def test_signed_url_upstream_unreachable_is_unavailable(make_stack: StackFactory) -> None:
    stack = await make_stack(elevenlabs_api_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    response = await stack.http.get("/signed-url", params={"agentId": AGENT_ID})
    assert time.monotonic() - started < 10
    assert_json_error(response, 503)


# --- feature flag ---------------------------------------------------------------------------------


async def test_disabled_flag_turns_every_agent_route_into_503(make_stack: StackFactory) -> None:
    stack = await make_stack(elevenlabs_agent_enabled=False)
    cid = CONVERSATION
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/agent-tools", tool_body()),
        ("POST", "/agent-tools/code_task", tool_body()),
        ("POST", "/callback", {"success": True, "requestId": "task-1", "exitCode": 0, "output": "ok"}),
        ("GET", "/signed-url?agentId=" + AGENT_ID, None),
        ("GET", "/agent-conversations/api/list", None),
        ("POST", "/agent-conversations/api/new", {"agentId": AGENT_ID}),
        ("GET", f"/agent-conversations/api/{cid}", None),
        ("POST", f"/agent-conversations/api/{cid}/message", {"role": "user", "content": "hi"}),
        ("POST", f"/agent-conversations/api/{cid}/session", {"sessionUrl": "ws://127.0.0.1/x"}),
        ("GET", f"/agent-conversations/api/{cid}/events", None),
        ("POST", f"/agent-conversations/api/{cid}/events/ack", {"taskIds": ["task-1"]}),
    ]
    for method, path, body in requests:
        response = await stack.http.request(method, path, json=body, headers=stack.auth)
        assert_json_error(response, 503)
    assert stack.runner.received == []
    assert stack.elevenlabs.signed_url_requests == 0
    assert await stack.redis.dbsize() == 0

    assert (await stack.http.get("/health")).status_code == 200
    assert (await stack.http.get("/ready")).status_code == 200
    assert (await stack.http.get("/metrics")).status_code == 200


# --- hostile input --------------------------------------------------------------------------------

DEEP_ARRAYS = b"[" * 100_000 + b"]" * 100_000


def _deep_value(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def _valid_body_for(route: str) -> bytes:
    """A body the route accepts, as a template with `@DEEP@` where a nested value fits in."""
    if route.startswith("/agent-tools"):
        return b'{"tool_name":"code_task","conversation_id":"conv_deep","prompt":"hi","extra":@DEEP@}'
    if route == "/callback":
        return b'{"success":true,"requestId":"task-deep","exitCode":0,"output":"ok","command":@DEEP@}'
    if route.endswith("/new"):
        return b'{"agentId":"agent_test","metadata":{"x":@DEEP@}}'
    if route.endswith("/message"):
        return b'{"role":"tool","content":"hi","toolName":"code_task","toolArgs":{"x":@DEEP@}}'
    if route.endswith("/session"):
        return b'{"sessionUrl":"ws://127.0.0.1:9/v1/convai/conversation","metadata":{"x":@DEEP@}}'
    return b'{"taskIds":@DEEP@}'


# (name, body, content type or None for none at all, expected status)
BAD_BODIES: list[tuple[str, bytes, str | None, int]] = [
    ("truncated JSON", b'{"tool_name": "code_task", "prompt":', "application/json", 400),
    ("not JSON at all", b"hello there", "application/json", 400),
    ("trailing garbage", b'{"a": 1} {"b": 2}', "application/json", 400),
    ("JSON array", b'[{"prompt": "x"}]', "application/json", 400),
    ("JSON number", b"42", "application/json", 400),
    ("JSON string", b'"prompt"', "application/json", 400),
    ("JSON null", b"null", "application/json", 400),
    ("JSON true", b"true", "application/json", 400),
    ("NaN", b'{"a": NaN}', "application/json", 400),
    ("huge integer", b'{"exitCode": 1' + b"0" * 400 + b"}", "application/json", 400),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe\xc3("}', "application/json", 400),
    ("lone surrogate escape", b'{"prompt": "\\ud800"}', "application/json", 400),
    ("text/plain", b'{"prompt": "x"}', "text/plain", 415),
    ("form encoded", b"prompt=x", "application/x-www-form-urlencoded", 415),
    ("no content type", b'{"prompt": "x"}', None, 415),
    ("100000 nested arrays", DEEP_ARRAYS, "application/json", 400),
]


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_bad_bodies_get_json_4xx_on_every_post_route(stack: Stack, route: str) -> None:
    cid = await prepare(stack)
    path = route.format(cid=cid)
    cases = list(BAD_BODIES)
    if not route.endswith("/new"):  # POST /new with no body creates a conversation with defaults
        cases += [
            ("empty body", b"", "application/json", 400),
            ("whitespace body", b"  \n\t ", "application/json", 400),
        ]
    problems = []
    for name, content, content_type, status in cases:
        headers = dict(stack.auth)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await stack.http.post(path, content=content, headers=headers)
        try:
            assert_json_error(response, status)
        except AssertionError as exc:
            problems.append(f"{name}: {exc}")
    assert not problems, "\n".join(problems)
    assert stack.runner.received == []


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("depth", [300, 1000])
async def test_deeply_nested_value_inside_a_valid_body_is_not_a_500(stack: Stack, route: str, depth: int) -> None:
    """Nesting the JSON parser accepts (orjson: up to 1024 levels) but that is too deep to store or
    re-encode must be refused as bad input, not crash the handler."""
    cid = await prepare(stack)
    body = _valid_body_for(route).replace(b"@DEEP@", _deep_value(depth))
    response = await stack.http.post(
        route.format(cid=cid), content=body, headers={**stack.auth, "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert_json_error(response, response.status_code)
    assert (await stack.http.get("/health")).status_code == 200


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_oversized_bodies_are_413_with_and_without_content_length(make_stack: StackFactory, route: str) -> None:
    stack = await make_stack(max_body_bytes=1000, max_callback_body_bytes=1000)
    cid = await prepare(stack)
    path = route.format(cid=cid)
    body = b'{"prompt": "' + b"x" * 5000 + b'"}'
    headers = {**stack.auth, "Content-Type": "application/json"}

    response = await stack.http.post(path, content=body, headers=headers)
    assert_json_error(response, 413)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    response = await stack.http.post(path, content=chunks(), headers=headers)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert_json_error(response, 413)
    assert stack.runner.received == []


async def test_body_just_under_the_limit_is_accepted(make_stack: StackFactory) -> None:
    stack = await make_stack(max_body_bytes=1000)
    body = tool_body(prompt="y" * 800)
    response = await stack.call_tool(body)
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True


async def test_unknown_route_is_json_404(stack: Stack) -> None:
    for method in ("GET", "POST"):
        response = await stack.http.request(method, "/no/such/route", json={})
        assert_json_error(response, 404)
    # A trailing slash is another (unknown) path, not a bodiless redirect.
    for method, path in (("GET", "/health/"), ("POST", "/callback/"), ("GET", "/agent-conversations/api/list/")):
        assert_json_error(await stack.http.request(method, path, json={}), 404)


async def test_unknown_conversation_is_json_404(stack: Stack) -> None:
    assert_json_error(await stack.http.get("/agent-conversations/api/conv-does-not-exist"), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/agent-tools"),
        ("PUT", "/agent-tools"),
        ("GET", "/callback"),
        ("DELETE", "/agent-conversations/api/new"),
        ("POST", "/health"),
        ("POST", "/signed-url"),
    ],
)
async def test_wrong_method_is_json_405(stack: Stack, method: str, path: str) -> None:
    response = await stack.http.request(method, path, headers=stack.auth)
    assert_json_error(response, 405)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/agent-conversations/api/list", {"limit": "abc"}),
        ("/agent-conversations/api/list", {"limit": "100000"}),
        ("/agent-conversations/api/list", {"offset": "-1"}),
        ("/agent-conversations/api/bad*id", {}),
        ("/agent-conversations/api/" + "a" * 300, {}),
        ("/signed-url", {"agentId": "x" * 500}),
    ],
)
async def test_bad_query_and_path_values_are_json_400(stack: Stack, path: str, params: dict[str, str]) -> None:
    assert_json_error(await stack.http.get(path, params=params), 400)


# --- Redis outage ---------------------------------------------------------------------------------


async def test_redis_down_then_back(stack: Stack, redis_server: RedisServer) -> None:
    assert (await stack.call_tool(tool_body())).json()["success"] is True
    redis_server.stop()
    try:
        started = time.monotonic()
        response = await stack.call_tool(tool_body(prompt="while redis is down"))
        elapsed = time.monotonic() - started
        body = assert_json_error(response, 503)
        assert isinstance(body.get("message"), str) and len(body["message"].split()) >= 3, body
        assert elapsed < 5, f"answered after {elapsed:.1f} s"

        health = await stack.http.get("/health")
        assert health.status_code == 200
        assert health.json()["redis"] == "disconnected"

        ready = await stack.http.get("/ready")
        assert ready.status_code == 503
        assert ready.headers["content-type"].startswith("application/health+json")
        assert ready.json()["status"] == "fail"

        assert_json_error(await stack.http.get("/agent-conversations/api/list"), 503)
    finally:
        redis_server.start()

    response = await stack.call_tool(tool_body(prompt="after redis is back"))
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    assert (await stack.http.get("/ready")).status_code == 200
    assert (await stack.http.get("/health")).json()["redis"] == "connected"


# --- CORS -----------------------------------------------------------------------------------------


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }


async def test_cors_allows_only_configured_origins(make_stack: StackFactory) -> None:
    stack = await make_stack(cors_allow_origins=("https://app.example",))
    path = "/agent-conversations/api/new"

    allowed = await stack.http.options(path, headers=_preflight("https://app.example"))
    assert allowed.status_code == 200
    assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
    assert "POST" in allowed.headers.get("access-control-allow-methods", "")
    # A named origin may send credentials (the token cookie, a proxy's cookie): never reflected for others.
    assert allowed.headers.get("access-control-allow-credentials") == "true"

    denied = await stack.http.options(path, headers=_preflight("https://evil.example"))
    # Without Access-Control-Allow-Origin the browser refuses the request, credentials or not
    # (Starlette's refused preflight still carries its static Allow-Credentials header).
    assert denied.status_code == 400
    assert "access-control-allow-origin" not in denied.headers

    simple = await stack.http.get("/health", headers={"Origin": "https://app.example"})
    assert simple.headers.get("access-control-allow-origin") == "https://app.example"
    simple = await stack.http.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_without_configured_origins_allows_none(stack: Stack) -> None:
    response = await stack.http.options("/agent-conversations/api/new", headers=_preflight("https://app.example"))
    assert "access-control-allow-origin" not in response.headers
    response = await stack.http.get("/health", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_cors_wildcard_never_comes_with_credentials(make_stack: StackFactory) -> None:
    stack = await make_stack(cors_allow_origins=("*",))
    for response in (
        await stack.http.options("/agent-conversations/api/new", headers=_preflight("https://any.example")),
        await stack.http.get("/health", headers={"Origin": "https://any.example"}),
    ):
        allow_origin = response.headers.get("access-control-allow-origin")
        assert allow_origin in ("*", "https://any.example")
        assert response.headers.get("access-control-allow-credentials") != "true"


# --- request ids ----------------------------------------------------------------------------------


async def test_request_id_is_echoed_or_generated(stack: Stack) -> None:
    response = await stack.http.get("/health", headers={"X-Request-Id": "req-abc-123"})
    assert response.headers["x-request-id"] == "req-abc-123"
    generated = (await stack.http.get("/health")).headers["x-request-id"]
    assert generated and generated != "req-abc-123"
    too_long = (await stack.http.get("/health", headers={"X-Request-Id": "r" * 500})).headers["x-request-id"]
    assert too_long != "r" * 500
