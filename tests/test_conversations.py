"""Conversations API (SPEC §3) and live-session registration with its SSRF guard (SPEC §3, §5, §6)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest

from elevenlabs_agent.url_policy import MAX_URL_LENGTH, check_url, host_allowed
from tests.conftest import AGENT_ID, Stack, StackFactory
from tests.helpers import assert_conversation_shape, assert_iso_utc, assert_json_error

API = "/agent-conversations/api"
ELEVENLABS_HOSTS = ("elevenlabs.io", "*.elevenlabs.io")


# --- create / get ---------------------------------------------------------------------------------


async def test_create_without_body(stack: Stack) -> None:
    response = await stack.http.post(f"{API}/new")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True
    assert_conversation_shape(body)
    assert body["messages"] == []
    assert body["metadata"] == {}
    assert "agentId" not in body
    uuid.UUID(body["conversationId"])  # a generated id
    assert body["conversation"]["conversationId"] == body["conversationId"]

    # It is persisted under the documented key.
    stored = await stack.redis.hgetall(f"elevenlabs:conversation:{body['conversationId']}")
    assert stored["conversationId"] == body["conversationId"]
    assert await stack.redis.ttl(f"elevenlabs:conversation:{body['conversationId']}") == -1  # persistent


async def test_create_with_empty_object_body(stack: Stack) -> None:
    response = await stack.http.post(f"{API}/new", json={})
    assert response.status_code == 201, response.text
    assert_conversation_shape(response.json())


async def test_create_with_id_agent_and_metadata_then_get(stack: Stack) -> None:
    response = await stack.http.post(
        f"{API}/new", json={"conversationId": "conv_A-1.x", "agentId": AGENT_ID, "metadata": {"title": "Login bug"}}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["conversationId"] == "conv_A-1.x"
    assert created["agentId"] == AGENT_ID
    assert created["metadata"] == {"title": "Login bug"}

    response = await stack.http.get(f"{API}/conv_A-1.x")
    assert response.status_code == 200
    got = response.json()
    assert got["success"] is True
    assert_conversation_shape(got)
    for name in ("conversationId", "messages", "createdAt", "agentId", "metadata"):
        assert got[name] == created[name]
    assert got["conversation"]["conversationId"] == "conv_A-1.x"


async def test_create_duplicate_id_is_409_and_keeps_original(stack: Stack) -> None:
    first = await stack.http.post(f"{API}/new", json={"conversationId": "dup-1", "agentId": "agent_one"})
    assert first.status_code == 201
    await stack.http.post(f"{API}/dup-1/message", json={"role": "user", "content": "hi"})
    second = await stack.http.post(f"{API}/new", json={"conversationId": "dup-1", "agentId": "agent_two"})
    body = assert_json_error(second, 409)
    assert body.get("conversationId") == "dup-1"
    got = (await stack.http.get(f"{API}/dup-1")).json()
    assert got["agentId"] == "agent_one"
    assert [m["content"] for m in got["messages"]] == ["hi"]
    assert got["createdAt"] == first.json()["createdAt"]
    listing = (await stack.http.get(f"{API}/list")).json()
    assert listing["total"] == 1


BAD_CREATE_BODIES: list[Any] = [
    {"conversationId": "bad id"},
    {"conversationId": "a:b"},
    {"conversationId": "a*"},
    {"conversationId": "{x}"},
    {"conversationId": ""},
    {"conversationId": "x" * 129},
    {"conversationId": 123},
    {"agentId": 5},
    {"metadata": "not an object"},
    {"metadata": {"big": "x" * 20_000}},
    [],
    "text",
]


async def test_create_rejects_bad_input(stack: Stack) -> None:
    for body in BAD_CREATE_BODIES:
        response = await stack.http.post(f"{API}/new", json=body)
        assert response.status_code == 400, (body, response.text)
        assert_json_error(response, 400)
    assert (await stack.http.get(f"{API}/list")).json()["total"] == 0


async def test_create_rejects_malformed_json_and_wrong_content_type(stack: Stack) -> None:
    bad_json = await stack.http.post(f"{API}/new", content=b"{nope", headers={"Content-Type": "application/json"})
    assert_json_error(bad_json, 400)
    wrong_type = await stack.http.post(f"{API}/new", content=b"a=b", headers={"Content-Type": "text/plain"})
    assert_json_error(wrong_type, 415)


async def test_get_unknown_is_404_and_bad_id_400(stack: Stack) -> None:
    body = assert_json_error(await stack.http.get(f"{API}/does-not-exist"), 404)
    assert body.get("conversationId") == "does-not-exist"
    for bad in ("bad%20id", "a:b", "a*b", "%7Bx%7D", "-leading-dash", "x" * 129):
        assert_json_error(await stack.http.get(f"{API}/{bad}"), 400)


# --- messages -------------------------------------------------------------------------------------


async def test_append_messages_in_order(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    created = (await stack.http.get(f"{API}/{conversation_id}")).json()
    sent = [
        {"role": "user", "content": "Please fix the login bug", "source": "voice"},
        {"role": "assistant", "content": "On it.", "source": "voice"},
        {"role": "system", "content": "session started", "source": "system_event"},
        {
            "role": "tool",
            "content": "ran",
            "source": "tool_output",
            "toolName": "code_task",
            "toolArgs": {"prompt": "x"},
            "toolOutput": "ok",
            "status": "completed",
        },
        {"role": "user", "content": ""},  # source defaults to text; empty content is still a string
    ]
    for message in sent:
        response = await stack.http.post(f"{API}/{conversation_id}/message", json=message)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["success"] is True
        assert body["message"]["role"] == message["role"]
        assert body["message"]["content"] == message["content"]
        assert_iso_utc(body["message"]["timestamp"])
        await asyncio.sleep(0.002)

    got = (await stack.http.get(f"{API}/{conversation_id}")).json()
    messages = got["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [(m["role"], m["content"]) for m in sent]
    assert [m["source"] for m in messages] == ["voice", "voice", "system_event", "tool_output", "text"]
    tool = messages[3]
    assert tool["toolName"] == "code_task" and tool["toolArgs"] == {"prompt": "x"}
    assert tool["toolOutput"] == "ok" and tool["status"] == "completed"
    stamps = [assert_iso_utc(m["timestamp"]) for m in messages]
    assert stamps == sorted(stamps)
    assert assert_iso_utc(got["lastAccessedAt"]) >= assert_iso_utc(created["lastAccessedAt"])
    assert got["lastAccessedAt"] == messages[-1]["timestamp"]


async def test_append_keeps_only_documented_fields(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    response = await stack.http.post(
        f"{API}/{conversation_id}/message",
        json={"role": "user", "content": "hi", "timestamp": "1999-01-01T00:00:00Z", "admin": True},
    )
    assert response.status_code == 201
    message = (await stack.http.get(f"{API}/{conversation_id}")).json()["messages"][0]
    assert "admin" not in message
    assert message["timestamp"] != "1999-01-01T00:00:00Z"  # the server stamps messages


BAD_MESSAGES: list[Any] = [
    {"role": "admin", "content": "x"},
    {"content": "x"},
    {"role": None, "content": "x"},
    {"role": "user"},
    {"role": "user", "content": None},
    {"role": "user", "content": 42},
    {"role": "user", "content": ["a"]},
    {"role": "user", "content": {"text": "a"}},
    {"role": "user", "content": "x" * 100_001},
    {"role": "user", "content": "x", "source": "email"},
    {"role": "user", "content": "x", "source": 1},
    {"role": "tool", "content": "x", "status": "done"},
    {"role": "tool", "content": "x", "toolName": 5},
    [],
    "hello",
]


async def test_append_rejects_bad_message(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    for body in BAD_MESSAGES:
        response = await stack.http.post(f"{API}/{conversation_id}/message", json=body)
        assert response.status_code == 400, (body, response.text)
        assert_json_error(response, 400)
    assert (await stack.http.get(f"{API}/{conversation_id}")).json()["messages"] == []


async def test_append_to_unknown_conversation_is_404_and_does_not_create_it(stack: Stack) -> None:
    response = await stack.http.post(f"{API}/ghost/message", json={"role": "user", "content": "hi"})
    assert_json_error(response, 404)
    assert_json_error(await stack.http.get(f"{API}/ghost"), 404)
    assert await stack.redis.exists("elevenlabs:conversation:ghost") == 0
    assert_json_error(await stack.http.post(f"{API}/bad%20id/message", json={"role": "user", "content": "hi"}), 400)


async def test_message_cap_is_409(make_stack: StackFactory) -> None:
    stack = await make_stack(max_messages_per_conversation=3)
    conversation_id = await stack.create_conversation()
    for n in range(3):
        response = await stack.http.post(f"{API}/{conversation_id}/message", json={"role": "user", "content": str(n)})
        assert response.status_code == 201, response.text
    over = await stack.http.post(f"{API}/{conversation_id}/message", json={"role": "user", "content": "3"})
    assert_json_error(over, 409)
    messages = (await stack.http.get(f"{API}/{conversation_id}")).json()["messages"]
    assert [m["content"] for m in messages] == ["0", "1", "2"]


# --- list -----------------------------------------------------------------------------------------


async def test_list_newest_first_with_pagination(stack: Stack) -> None:
    empty = await stack.http.get(f"{API}/list")
    assert empty.status_code == 200
    assert empty.json()["conversations"] == [] and empty.json()["total"] == 0

    ids = []
    for n in range(5):
        ids.append(await stack.create_conversation(conversationId=f"c{n}"))
        await asyncio.sleep(0.01)  # distinct creation times (ms)
    newest_first = list(reversed(ids))

    response = await stack.http.get(f"{API}/list")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["total"] == 5
    assert [c["conversationId"] for c in body["conversations"]] == newest_first
    for conversation in body["conversations"]:
        assert_conversation_shape(conversation)

    page1 = (await stack.http.get(f"{API}/list", params={"limit": 2})).json()
    page2 = (await stack.http.get(f"{API}/list", params={"limit": 2, "offset": 2})).json()
    page3 = (await stack.http.get(f"{API}/list", params={"limit": 2, "offset": 4})).json()
    beyond = (await stack.http.get(f"{API}/list", params={"limit": 2, "offset": 10})).json()
    assert [c["conversationId"] for c in page1["conversations"]] == newest_first[0:2]
    assert [c["conversationId"] for c in page2["conversations"]] == newest_first[2:4]
    assert [c["conversationId"] for c in page3["conversations"]] == newest_first[4:]
    assert beyond["conversations"] == []
    assert page1["total"] == page2["total"] == page3["total"] == beyond["total"] == 5
    assert (page2["limit"], page2["offset"]) == (2, 2)


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "-1"}, {"limit": "abc"}, {"limit": "101"}, {"limit": "1.5"}, {"offset": "-1"}],
)
async def test_list_rejects_bad_paging(stack: Stack, params: dict[str, str]) -> None:
    assert_json_error(await stack.http.get(f"{API}/list", params=params), 400)


# --- session registration -------------------------------------------------------------------------


def session_body(stack: Stack, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sessionUrl": f"{stack.elevenlabs_server.ws_url}/v1/convai/conversation?agent_id={AGENT_ID}",
        "transport": "websocket",
        "metadata": {"agentId": AGENT_ID, "elevenConversationId": "conv_eleven_1"},
    }
    body.update(extra)
    return body


async def test_register_session_stores_hash_alias_and_ttl(stack: Stack) -> None:
    conversation_id = await stack.create_conversation(agentId=AGENT_ID)
    push_url = f"{stack.elevenlabs_server.ws_url}/push/conv_eleven_1"
    body = session_body(stack, pushUrl=push_url, sessionId="sess-1", agentSessionId="agent-sess-1", expiresAt=12345)
    response = await stack.http.post(f"{API}/{conversation_id}/session", json=body)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["success"] is True
    assert reply["message"] == "Session registered"
    assert reply["sessionId"] == "sess-1"

    key = f"elevenlabs:session:{conversation_id}"
    stored = await stack.redis.hgetall(key)
    assert stored["conversationId"] == conversation_id
    assert stored["sessionUrl"] == body["sessionUrl"]
    assert stored["sessionId"] == "sess-1"
    assert stored["transport"] == "websocket"
    assert stored["pushUrl"] == push_url
    assert stored["agentSessionId"] == "agent-sess-1"
    assert stored["expiresAt"] == "12345"
    assert orjson.loads(stored["metadata"]) == body["metadata"]
    assert_iso_utc(stored["registeredAt"])
    assert 590 <= await stack.redis.ttl(key) <= 600

    assert await stack.redis.get("elevenlabs:alias:conv_eleven_1") == conversation_id
    assert await stack.redis.ttl("elevenlabs:alias:conv_eleven_1") > 0


async def test_register_session_generates_session_id(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    response = await stack.http.post(
        f"{API}/{conversation_id}/session", json={"sessionUrl": session_body(stack)["sessionUrl"]}
    )
    assert response.status_code == 200, response.text
    session_id = response.json()["sessionId"]
    assert isinstance(session_id, str) and session_id
    stored = await stack.redis.hgetall(f"elevenlabs:session:{conversation_id}")
    assert stored["sessionId"] == session_id
    assert stored["transport"] == "websocket"
    assert "pushUrl" not in stored


async def test_register_session_webrtc_transport(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    response = await stack.http.post(f"{API}/{conversation_id}/session", json=session_body(stack, transport="webrtc"))
    assert response.status_code == 200
    assert await stack.redis.hget(f"elevenlabs:session:{conversation_id}", "transport") == "webrtc"


async def test_webhook_finds_conversation_through_alias(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    eleven = "conv_eleven_alias"
    body = session_body(stack, metadata={"elevenConversationId": eleven})
    assert (await stack.http.post(f"{API}/{conversation_id}/session", json=body)).status_code == 200
    response = await stack.call_tool({"tool_name": "code_task", "conversation_id": eleven, "prompt": "do it"})
    assert response.status_code == 200 and response.json()["success"] is True
    task = await stack.task(response.json()["taskId"])
    assert task["conversationId"] == conversation_id


async def test_register_session_unknown_conversation_is_404(stack: Stack) -> None:
    response = await stack.http.post(f"{API}/nobody-here/session", json=session_body(stack))
    assert_json_error(response, 404)
    assert await stack.redis.exists("elevenlabs:session:nobody-here") == 0
    assert await stack.redis.exists("elevenlabs:alias:conv_eleven_1") == 0
    assert_json_error(await stack.http.post(f"{API}/bad%20id/session", json=session_body(stack)), 400)


BAD_SESSION_CHANGES: list[dict[str, Any]] = [
    {"sessionUrl": ""},
    {"sessionUrl": 5},
    {"sessionUrl": ["ws://127.0.0.1/x"]},
    {"transport": "carrier-pigeon"},
    {"pushUrl": 7},
    {"sessionId": "bad id"},
    {"metadata": "nope"},
    {"metadata": {"elevenConversationId": "has space"}},
    {"expiresAt": {"at": 1}},
]


async def test_register_session_rejects_bad_body(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    url = f"{API}/{conversation_id}/session"
    without_url = session_body(stack)
    del without_url["sessionUrl"]
    assert "sessionUrl" in assert_json_error(await stack.http.post(url, json=without_url), 400)["error"]
    for change in BAD_SESSION_CHANGES:
        response = await stack.http.post(url, json={**session_body(stack), **change})
        assert response.status_code == 400, (change, response.text)
        assert_json_error(response, 400)
    assert await stack.redis.exists(f"elevenlabs:session:{conversation_id}") == 0


async def test_register_session_rejects_non_object_body(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    assert_json_error(await stack.http.post(f"{API}/{conversation_id}/session", json=[]), 400)
    empty = await stack.http.post(
        f"{API}/{conversation_id}/session", content=b"", headers={"Content-Type": "application/json"}
    )
    assert_json_error(empty, 400)


SSRF_URLS = [
    "ws://10.0.0.1/x",
    "ws://localhost:1/x",
    "http://169.254.169.254/latest/meta-data/",
    "ws://[::1]:6379/",
    "ws://0.0.0.0:6379/",
    "ws://192.168.1.1/x",
    "wss://evil.example.com/x",
    "ftp://127.0.0.1/x",
    "file:///etc/passwd",
    "redis://127.0.0.1:6379/",
    "ws://user:pass@127.0.0.1/x",
    "ws://user@127.0.0.1/x",
    "ws://127.0.0.1\\@evil.example.com/x",
    "ws:///no-host",
    "127.0.0.1/x",
    "ws://127.0.0.1/" + "x" * MAX_URL_LENGTH,
]


async def test_register_session_ssrf_guard(stack: Stack) -> None:
    conversation_id = await stack.create_conversation()
    for field in ("sessionUrl", "pushUrl"):
        for url in SSRF_URLS:
            body = {**session_body(stack), field: url, "metadata": {"elevenConversationId": "conv_ssrf"}}
            response = await stack.http.post(f"{API}/{conversation_id}/session", json=body)
            assert response.status_code == 400, (field, url, response.text)
            assert_json_error(response, 400)
    assert await stack.redis.exists(f"elevenlabs:session:{conversation_id}") == 0
    assert await stack.redis.exists("elevenlabs:alias:conv_ssrf") == 0


async def test_register_session_with_default_elevenlabs_hosts(make_stack: StackFactory) -> None:
    stack = await make_stack(session_url_hosts=ELEVENLABS_HOSTS)
    conversation_id = await stack.create_conversation()
    url = f"{API}/{conversation_id}/session"
    allowed = [
        "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=x",
        "wss://api.us.elevenlabs.io/v1/convai/conversation?agent_id=x",
        "wss://elevenlabs.io/x",
        "WSS://API.ElevenLabs.IO/x",
    ]
    for session_url in allowed:
        response = await stack.http.post(url, json={"sessionUrl": session_url})
        assert response.status_code == 200, (session_url, response.text)
    refused = [
        session_body(stack)["sessionUrl"],  # loopback is not an ElevenLabs host
        "wss://elevenlabs.io.evil.com/x",
        "wss://evilelevenlabs.io/x",
        "wss://api.elevenlabs.io@evil.com/x",
        "wss://evil.com/#.elevenlabs.io",
        "wss://evil.com/?h=api.elevenlabs.io",
        "http://169.254.169.254/",
    ]
    for session_url in refused:
        assert_json_error(await stack.http.post(url, json={"sessionUrl": session_url}), 400)
    assert_json_error(
        await stack.http.post(
            url, json={"sessionUrl": allowed[0], "pushUrl": f"{stack.elevenlabs_server.ws_url}/push/x"}
        ),
        400,
    )


# --- url_policy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        ("api.elevenlabs.io", ELEVENLABS_HOSTS, True),
        ("api.us.elevenlabs.io", ELEVENLABS_HOSTS, True),
        ("elevenlabs.io", ELEVENLABS_HOSTS, True),
        ("API.ElevenLabs.IO", ELEVENLABS_HOSTS, True),
        ("api.elevenlabs.io.", ELEVENLABS_HOSTS, True),
        ("api.elevenlabs.io", ("*.ELEVENLABS.io",), True),
        ("elevenlabs.io", ("*.elevenlabs.io",), False),  # the wildcard matches sub-domains only
        ("evilelevenlabs.io", ("*.elevenlabs.io",), False),
        ("elevenlabs.io.evil.com", ELEVENLABS_HOSTS, False),
        ("api.elevenlabs.io.evil.com", ELEVENLABS_HOSTS, False),
        ("api.elevenlabs.io", ("elevenlabs.io",), False),  # an exact pattern is exact
        ("elevenlabs.io", ("elevenlabs.io",), True),
        ("127.0.0.1", ("127.0.0.1",), True),
        ("localhost", ("127.0.0.1",), False),
        ("127.0.0.2", ("127.0.0.1",), False),
        ("10.0.0.1", ELEVENLABS_HOSTS, False),
        ("api.elevenlabs.io", (), False),
        ("io", ("*.elevenlabs.io",), False),
    ],
)
def test_host_allowed(host: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert host_allowed(host, allowed) is expected


@pytest.mark.parametrize(
    "url",
    [
        "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=x",
        "ws://api.elevenlabs.io/x",
        "https://api.elevenlabs.io/x",
        "http://elevenlabs.io",
        "wss://api.elevenlabs.io:443/x",
        "WSS://API.ELEVENLABS.IO/x",
    ],
)
def test_check_url_accepts(url: str) -> None:
    assert check_url(url, ELEVENLABS_HOSTS) is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.elevenlabs.io/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "//api.elevenlabs.io/x",
        "api.elevenlabs.io/x",
        "wss:///x",
        "wss://user:pw@api.elevenlabs.io/x",
        "wss://user@api.elevenlabs.io/x",
        "wss://:pw@api.elevenlabs.io/x",
        "wss://api.elevenlabs.io@evil.com/x",
        "wss://api.elevenlabs.io\\@evil.com/x",
        "wss://evil.com#@api.elevenlabs.io",
        "wss://evil.com/.elevenlabs.io",
        "wss://api%2eelevenlabs.io/x",
        "http://[::1/x",
        "http://169.254.169.254/latest/meta-data/",
        "ws://10.0.0.1/x",
        "ws://localhost:1/x",
        "wss://api.elevenlabs.io/" + "x" * MAX_URL_LENGTH,
        "",
    ],
)
def test_check_url_rejects(url: str) -> None:
    reason = check_url(url, ELEVENLABS_HOSTS)
    assert isinstance(reason, str) and reason


def test_check_url_reasons_are_specific() -> None:
    assert "scheme" in (check_url("ftp://api.elevenlabs.io/", ELEVENLABS_HOSTS) or "")
    assert "credentials" in (check_url("wss://u:p@api.elevenlabs.io/", ELEVENLABS_HOSTS) or "")
    assert "SESSION_URL_HOSTS" in (check_url("ws://10.0.0.1/", ELEVENLABS_HOSTS) or "")
    assert "long" in (check_url("wss://api.elevenlabs.io/" + "x" * MAX_URL_LENGTH, ELEVENLABS_HOSTS) or "")
    assert check_url("ws://127.0.0.1:9/x", ("127.0.0.1",)) is None
