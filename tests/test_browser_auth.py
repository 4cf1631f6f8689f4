"""Route groups and browser authentication (README "Exposure"): every browser route refuses callers
without an identity, whatever transport (HTTP, SSE, WebSocket handshake); webhooks and probes keep
their own policies; `/signed-url` is rate limited per identity; METRICS_PORT moves /metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from starlette.routing import Route, WebSocketRoute

from elevenlabs_agent.http.access import AUTH_PATH, TOKEN_COOKIE, Group, group_of
from elevenlabs_agent.http.routes import ROUTES
from elevenlabs_agent.redis.server import RedisServer, free_port
from tests.conftest import AGENT_ID, Stack, StackFactory
from tests.helpers import BROWSER_IDENTITY
from tests.serve_proc import ServeProcess

# Every route and its group: the closing note's exposure list, proved by the tests below.
EXPECTED_GROUPS = {
    "/health": Group.PROBES,
    "/ready": Group.PROBES,
    "/metrics": Group.METRICS,
    "/openapi.json": Group.PUBLIC,
    AUTH_PATH: Group.PUBLIC,
    "/agent-conversations/relay.js": Group.PUBLIC,
    "/agent-conversations/relay.d.ts": Group.PUBLIC,
    "/agent-tools": Group.WEBHOOKS,
    "/agent-tools/{tool_name}": Group.WEBHOOKS,
    "/callback": Group.WEBHOOKS,
    "/config": Group.BROWSER,
    "/config/health": Group.BROWSER,
    "/signed-url": Group.BROWSER,
    "/agent-conversations/api/list": Group.BROWSER,
    "/agent-conversations/api/ws": Group.BROWSER,
    "/agent-conversations/api/new": Group.BROWSER,
    "/agent-conversations/api/{conversation_id}": Group.BROWSER,
    "/agent-conversations/api/{conversation_id}/message": Group.BROWSER,
    "/agent-conversations/api/{conversation_id}/session": Group.BROWSER,
    "/agent-conversations/api/{conversation_id}/events": Group.BROWSER,
    "/agent-conversations/api/{conversation_id}/events/ack": Group.BROWSER,
}


def _concrete(path: str) -> str:
    return path.replace("{conversation_id}", "conv-auth").replace("{tool_name}", "code_task")


def _browser_requests() -> list[tuple[str, str, Any]]:
    """(method, path, JSON body) for every browser-group route: a request that works with an identity."""
    requests: list[tuple[str, str, Any]] = []
    for route in ROUTES:
        if not isinstance(route, Route) or EXPECTED_GROUPS[route.path] is not Group.BROWSER:
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            body: Any = None
            if method == "POST":
                body = {
                    "/agent-conversations/api/new": {},
                    "/agent-conversations/api/{conversation_id}/message": {"role": "user", "content": "hi"},
                    "/agent-conversations/api/{conversation_id}/session": {"sessionUrl": "ws://127.0.0.1/x"},
                    "/agent-conversations/api/{conversation_id}/events/ack": {"taskIds": ["t-1"]},
                }[route.path]
            requests.append((method, _concrete(route.path), body))
    return requests


async def _send(client: httpx.AsyncClient, method: str, path: str, body: Any) -> httpx.Response:
    if path.endswith("/events"):
        async with client.stream(method, path) as response:
            await response.aread() if response.status_code != 200 else None
            return response
    return await client.request(method, path, json=body)


def _assert_401(response: httpx.Response, what: str) -> None:
    assert response.status_code == 401, (what, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), what
    body = response.json()
    assert body["success"] is False, (what, body)
    assert "auth" in body["error"] or "token" in body["error"], (what, body)


def test_every_route_belongs_to_its_documented_group() -> None:
    paths = {r.path for r in ROUTES if isinstance(r, Route | WebSocketRoute)}
    assert paths <= set(EXPECTED_GROUPS), f"a route without a documented group: {paths - set(EXPECTED_GROUPS)}"
    for path, group in EXPECTED_GROUPS.items():
        assert group_of(_concrete(path)) is group, path
    # Secure by default: a path nobody put in a group is a browser path.
    assert group_of("/agent-conversations/api/anything/new-thing") is Group.BROWSER
    assert group_of("/not-a-route") is Group.BROWSER


async def test_default_proxy_mode_refuses_every_browser_route_without_identity(stack: Stack) -> None:
    await stack.create_conversation(conversationId="conv-auth")
    async with httpx.AsyncClient(base_url=stack.service.url, timeout=10) as anonymous:
        for method, path, body in _browser_requests():
            _assert_401(await _send(anonymous, method, path, body), f"{method} {path}")
        # The identity header is not enough when it is malformed (control characters never reach us:
        # the HTTP parser refuses them first).
        bad = await anonymous.get("/agent-conversations/api/list", headers={"X-Forwarded-User": "u" * 257})
        assert bad.status_code == 401
    # With the proxy's identity header (from loopback, trusted by default) every one of them answers.
    for method, path, body in _browser_requests():
        response = await _send(stack.http, method, path, body)
        assert response.status_code != 401, (method, path, response.text)
        assert response.status_code < 500 or path == "/signed-url", (method, path, response.text)


async def test_identity_header_from_an_untrusted_peer_is_ignored(make_stack: StackFactory) -> None:
    stack = await make_stack(trusted_proxy_cidrs=("127.0.0.1/32",))
    await stack.create_conversation(conversationId="conv-auth")  # from 127.0.0.1: trusted
    # The same header from 127.0.0.2 (another loopback address, as a caller that is not the proxy).
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(
        base_url=stack.service.url, transport=transport, headers=BROWSER_IDENTITY, timeout=10
    ) as spoofer:
        for method, path, body in _browser_requests():
            response = await _send(spoofer, method, path, body)
            _assert_401(response, f"spoofed {method} {path}")
            assert "untrusted" in response.json()["error"]
        # The WebSocket handshake from there: refused the same way (websockets has no source-address
        # option, so the handshake is written by hand on a socket bound to 127.0.0.2).
        assert await _raw_handshake_status(stack, "127.0.0.2", BROWSER_IDENTITY) == 401
        # X-Forwarded-For naming a trusted address changes nothing: trust is the TCP peer's.
        forwarded = await spoofer.get("/agent-conversations/api/list", headers={"X-Forwarded-For": "127.0.0.1"})
        assert forwarded.status_code == 401
        # Probes and webhooks keep their own policies from anywhere.
        assert (await spoofer.get("/health")).status_code == 200
        assert (await spoofer.get("/ready")).status_code == 200
        assert (await spoofer.post("/agent-tools", json={"tool_name": "code_task"})).status_code == 401
    metrics = (await stack.http.get("/metrics")).text
    assert 'elevenlabs_agent_browser_auth_total{outcome="untrusted_peer"}' in metrics


async def test_token_mode_bearer_and_cookie(make_stack: StackFactory) -> None:
    token = "tok-" + "x" * 40
    stack = await make_stack(browser_auth="token", browser_api_tokens=f"other-token-123,{token}")
    base = stack.service.url
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        for method, path, body in _browser_requests():
            _assert_401(await _send(client, method, path, body), f"no token {method} {path}")
            wrong = await client.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
            _assert_401(wrong, f"wrong token {method} {path}")
            assert wrong.headers["www-authenticate"].startswith("Bearer")
        # The proxy's identity header means nothing in token mode.
        assert (await client.get("/agent-conversations/api/list", headers=BROWSER_IDENTITY)).status_code == 401

    ws_url = stack.service.ws_url + "/agent-conversations/api/ws?conversationId=conv-auth"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Cookie": f"{TOKEN_COOKIE}=nope"}, BROWSER_IDENTITY):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(ws_url, additional_headers=headers)
        assert refused.value.response.status_code == 401, headers

    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=10, headers=bearer) as client:
        created = await client.post("/agent-conversations/api/new", json={"conversationId": "conv-auth"})
        assert created.status_code == 201, created.text
        for method, path, body in _browser_requests():
            assert (await _send(client, method, path, body)).status_code != 401, (method, path)

    async with httpx.AsyncClient(base_url=base, timeout=10) as browser:
        assert (await browser.post(AUTH_PATH, json={"token": "wrong"})).status_code == 401
        assert (await browser.post(AUTH_PATH, json={"token": 5})).status_code == 400
        signed_in = await browser.post(AUTH_PATH, json={"token": token})
        assert signed_in.status_code == 200, signed_in.text
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith(f"{TOKEN_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        # EventSource cannot set headers: the cookie carries the token on the SSE stream.
        async with browser.stream("GET", "/agent-conversations/api/conv-auth/events") as events:
            assert events.status_code == 200
            async for chunk in events.aiter_raw():
                assert chunk.startswith(b"retry:")
                break
        # So does the WebSocket handshake (a browser sends the cookie with it).
        async with websockets.connect(ws_url, additional_headers={"Cookie": f"{TOKEN_COOKIE}={token}"}) as ws:
            assert orjson.loads(await ws.recv())["type"] == "agent_conversation.snapshot"
        assert (await browser.delete(AUTH_PATH)).status_code == 200
        assert (await browser.get("/agent-conversations/api/list")).status_code == 401


async def test_none_mode_only_when_set_and_visible(make_stack: StackFactory) -> None:
    stack = await make_stack(browser_auth="none")
    async with httpx.AsyncClient(base_url=stack.service.url, timeout=10) as anonymous:
        assert (await anonymous.post("/agent-conversations/api/new", json={})).status_code == 201
        assert (await anonymous.get("/config")).json()["config"]["browserAuth"] == "none"
        ready = (await anonymous.get("/ready")).json()
        assert ready["checks"]["browser:auth"][0]["status"] == "warn"
    # Token sign-in is refused where tokens are not the policy.
    assert (await stack.http.post(AUTH_PATH, json={"token": "x"})).status_code == 400


def test_token_mode_needs_tokens() -> None:
    from pydantic import ValidationError

    from elevenlabs_agent.settings import Settings

    with pytest.raises(ValidationError, match="BROWSER_API_TOKENS"):
        Settings(browser_auth="token")
    with pytest.raises(ValidationError):
        Settings(browser_auth="open")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Settings(trusted_proxy_cidrs="10.0.0.0/8,not-a-network")


async def test_signed_url_rate_limit_per_identity(make_stack: StackFactory) -> None:
    stack = await make_stack(signed_url_rate_per_minute=3)
    for _ in range(3):
        response = await stack.http.get("/signed-url", params={"agentId": AGENT_ID})
        assert response.status_code == 200, response.text
    limited = await stack.http.get("/signed-url", params={"agentId": AGENT_ID})
    assert limited.status_code == 429
    assert limited.json()["success"] is False and "3 a minute" in limited.json()["error"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # Another identity has its own budget.
    other = await stack.http.get("/signed-url", params={"agentId": AGENT_ID}, headers={"X-Forwarded-User": "bob"})
    assert other.status_code == 200
    # The window ends (made to end now, instead of waiting a minute): the first identity may go on.
    keys = [k async for k in stack.redis.scan_iter("elevenlabs:ratelimit:signed-url:*")]
    assert len(keys) == 2 and all("test-user" not in k for k in keys)  # ids are hashed
    for key in keys:
        assert 0 < await stack.redis.ttl(key) <= 60
        await stack.redis.pexpire(key, 1)
    await asyncio.sleep(0.01)
    assert (await stack.http.get("/signed-url", params={"agentId": AGENT_ID})).status_code == 200


async def test_no_credential_reaches_the_logs(make_stack: StackFactory, capsys: pytest.CaptureFixture[str]) -> None:
    token = "tok-secret-" + "y" * 30
    stack = await make_stack(browser_auth="token", browser_api_tokens=token)
    async with httpx.AsyncClient(base_url=stack.service.url, timeout=10) as client:
        await client.get("/agent-conversations/api/list", headers={"Authorization": f"Bearer {token}"})
        await client.get("/agent-conversations/api/list", headers={"Authorization": "Bearer wrong-guess-token"})
        await client.post(AUTH_PATH, json={"token": token})
    proxied = await make_stack()
    await proxied.http.get("/agent-conversations/api/list", headers={"X-Forwarded-User": "alice@example.com"})
    output = capsys.readouterr().out
    assert "browser_auth.refused" in output and '"identity": "token:' in output
    for secret in (token, "wrong-guess-token", "alice@example.com"):
        assert secret not in output


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_metrics_port_serves_metrics_and_probes_apart(
    tmp_path: Path, redis_server: RedisServer, workers: str
) -> None:
    if not redis_server.running:
        redis_server.start()
    metrics_port = free_port()
    service = ServeProcess(tmp_path, REDIS_URL=redis_server.url, METRICS_PORT=str(metrics_port), WORKERS=workers)
    await service.start(path="/ready")
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{service.url}/metrics")).status_code == 404
            assert (await client.get(f"{service.url}/health")).status_code == 200
            side = f"http://127.0.0.1:{metrics_port}"
            scraped = await client.get(f"{side}/metrics")
            assert scraped.status_code == 200 and "elevenlabs_agent_http_requests_total" in scraped.text
            assert (await client.get(f"{side}/ready")).status_code == 200
            # Nothing but metrics and probes there.
            assert (
                await client.get(f"{side}/agent-conversations/api/list", headers=BROWSER_IDENTITY)
            ).status_code == 404
    finally:
        service.terminate()
        assert service.wait(timeout=30) == 0


async def test_websocket_handshake_needs_identity(stack: Stack) -> None:
    """The edge authenticates WebSocket handshakes on browser paths before any route sees them."""
    url = stack.service.ws_url + "/agent-conversations/api/ws?conversationId=conv-auth"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url)
    assert refused.value.response.status_code == 401
    assert orjson.loads(refused.value.response.body or b"{}")["success"] is False


async def _raw_handshake_status(stack: Stack, source: str, headers: dict[str, str]) -> int:
    """The HTTP status of a WebSocket handshake sent from `source` (a loopback address)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.service.port, local_addr=(source, 0))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(
        (
            "GET /agent-conversations/api/ws?conversationId=conv-auth HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{stack.service.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + extra + "\r\n"
        ).encode()
    )
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return int(status_line.split()[1])
