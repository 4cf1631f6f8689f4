"""POST /agent-tools (SPEC §4): body shapes, auth, dispatch failures, bad input and get_task_status.

Everything goes over HTTP to the real service; Redis is inspected with plain commands, as an operator would.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

import orjson
import pytest

from elevenlabs_agent.sim.cursor_runner import callback_body, split_secret
from tests.conftest import Stack, StackFactory
from tests.helpers import assert_json_error

TASK_TTL = 86_400


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_speakable(reply: dict[str, Any]) -> str:
    message = reply.get("message")
    assert isinstance(message, str) and len(message.strip()) > 10, reply
    assert "{" not in message and "Traceback" not in message, message
    return message


async def dump_redis(stack: Stack) -> str:
    """Every key and value in Redis as one string (to look for leaked secrets)."""
    r = stack.redis
    parts: list[str] = []
    async for name in r.scan_iter(count=500):
        kind = await r.type(name)
        if kind == "hash":
            value: Any = await r.hgetall(name)
        elif kind == "string":
            value = await r.get(name)
        elif kind == "stream":
            value = await r.xrange(name)
        elif kind == "zset":
            value = await r.zrange(name, 0, -1)
        elif kind == "set":
            value = sorted(await r.smembers(name))
        elif kind == "list":
            value = await r.lrange(name, 0, -1)
        else:
            value = kind
        parts.append(f"{name} => {value!r}")
    return "\n".join(parts)


async def task_keys(stack: Stack) -> list[str]:
    return [k async for k in stack.redis.scan_iter(match="cursor_task:*", count=500)]


async def tool_messages(stack: Stack, conversation_id: str) -> list[dict[str, Any]]:
    response = await stack.http.get(f"/agent-conversations/api/{conversation_id}")
    assert response.status_code == 200, response.text
    return [m for m in response.json()["messages"] if m["role"] == "tool"]


async def failed_dispatches(stack: Stack) -> float:
    """Sum of the dispatch counter over every outcome but success."""
    text = (await stack.http.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("elevenlabs_agent_dispatches_total{") and 'outcome="accepted"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def post_callback(stack: Stack, sent: dict[str, Any], kind: str = "completion") -> dict[str, Any]:
    """What cursor-runner does for the dispatched request `sent`."""
    url, secret = split_secret(sent["callbackUrl"])
    assert secret
    response = await stack.http.post(
        url,
        json=callback_body(kind, sent["id"], sent["prompt"]),  # type: ignore[arg-type]
        headers={"X-Webhook-Secret": secret, "X-Cursor-Runner-Secret": secret},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- body shapes ---------------------------------------------------------------------------------


async def test_original_body_shape_records_pending_task_then_dispatches(stack: Stack) -> None:
    stack.runner.callback_kind = "none"  # keep the task pending
    conversation_id, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool(
        {
            "agent_id": "agent_test",
            "session_id": "sess_" + uuid.uuid4().hex,
            "tool_name": "code_task",
            "tool_args": {"prompt": "Add a health check endpoint", "repository": "demo-repo"},
            "conversation_id": eleven_id,
        }
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["success"] is True
    assert_speakable(reply)
    task_id = reply["requestId"]
    assert reply["taskId"] == task_id

    assert len(stack.runner.received) == 1
    sent = stack.runner.received[0]
    assert sent["id"] == task_id
    assert sent["prompt"] == "Add a health check endpoint"
    assert sent["conversationId"] == conversation_id  # ours, not ElevenLabs'
    assert sent["repository"] == "demo-repo"
    assert sent["queueType"] == "api"
    _, secret = split_secret(sent["callbackUrl"])
    assert secret and len(secret) >= 32

    task = await stack.task(task_id)
    assert task["status"] == "pending"
    assert task["conversationId"] == conversation_id
    assert task["toolName"] == "code_task"
    assert task["createdAt"]
    assert orjson.loads(task["toolArgs"])["prompt"] == "Add a health check endpoint"
    assert task["tokenHash"] and task["tokenHash"] != secret
    assert all(secret not in value for value in task.values())
    assert secret not in response.text
    assert secret not in await dump_redis(stack)  # nowhere in Redis, not only not in the task
    ttl = await stack.redis.ttl(f"cursor_task:{task_id}")
    assert TASK_TTL - 60 <= ttl <= TASK_TTL

    messages = await tool_messages(stack, conversation_id)
    assert len(messages) == 1
    assert messages[0]["status"] == "pending" and messages[0]["toolName"] == "code_task"
    await voice.close()


async def test_flat_body_shape(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    conversation_id, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "Rename the config module"}
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["success"] is True
    assert_speakable(reply)
    task = await stack.task(reply["taskId"])
    assert task["status"] == "pending"
    assert task["conversationId"] == conversation_id
    assert task["toolName"] == "code_task"
    assert stack.runner.received[0]["prompt"] == "Rename the config module"
    assert stack.runner.received[0]["conversationId"] == conversation_id
    await voice.close()


async def test_tool_name_from_path(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    conversation_id, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool(
        {"conversation_id": eleven_id, "prompt": "Split the service module"}, path="/agent-tools/refactor_code"
    )
    assert response.status_code == 200, response.text
    task = await stack.task(response.json()["taskId"])
    assert task["toolName"] == "refactor_code"
    assert task["conversationId"] == conversation_id
    assert stack.runner.received[0]["prompt"] == "Split the service module"
    messages = await tool_messages(stack, conversation_id)
    assert messages[0]["toolName"] == "refactor_code"
    await voice.close()


# --- auth ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"X-Webhook-Secret": "not-the-secret"}, id="wrong-header"),
        pytest.param({"Authorization": "Bearer not-the-secret"}, id="wrong-bearer"),
        pytest.param({"X-Webhook-Secret": ""}, id="empty-header"),
        pytest.param({"Authorization": "Basic Zm9vOmJhcg=="}, id="basic-auth"),
    ],
)
async def test_unauthenticated_call_is_401_and_dispatches_nothing(stack: Stack, headers: dict[str, str]) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "rm -rf /"}, headers=headers
    )
    assert_json_error(response, 401)
    assert stack.webhook_secret not in response.text
    assert stack.runner.received == []
    assert await task_keys(stack) == []
    assert await tool_messages(stack, conversation_id) == []
    await voice.close()


async def test_wrong_secret_with_right_prefix_is_401(stack: Stack) -> None:
    response = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": "conv_x", "prompt": "x"},
        headers={"X-Webhook-Secret": stack.webhook_secret[:-1]},
    )
    assert_json_error(response, 401)
    response = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": "conv_x", "prompt": "x"},
        headers={"X-Webhook-Secret": stack.webhook_secret + "x"},
    )
    assert_json_error(response, 401)
    assert stack.runner.received == []


async def test_bearer_secret_is_accepted(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    conversation_id, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "Bump the version"},
        headers={"Authorization": f"Bearer {stack.webhook_secret}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    assert (await stack.task(response.json()["taskId"]))["conversationId"] == conversation_id
    await voice.close()


@pytest.mark.parametrize("secret", [None, ""], ids=["unset", "empty"])
async def test_no_webhook_secret_configured_is_503(make_stack: StackFactory, secret: str | None) -> None:
    stack = await make_stack(webhook_secret=secret)
    for headers in ({}, stack.auth, {"X-Webhook-Secret": ""}):
        response = await stack.call_tool(
            {"tool_name": "code_task", "conversation_id": "conv_1", "prompt": "x"}, headers
        )
        body = assert_json_error(response, 503)
        assert "not configured" in body["error"]
    assert stack.runner.received == []
    assert await task_keys(stack) == []


async def test_insecure_dev_switch_accepts_without_secret(make_stack: StackFactory) -> None:
    stack = await make_stack(webhook_secret=None, elevenlabs_agent_insecure_dev=True)
    stack.runner.callback_kind = "none"
    response = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": "conv_dev", "prompt": "Try it locally"}, headers={}
    )
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    assert (await stack.task(response.json()["taskId"]))["status"] == "pending"
    assert len(stack.runner.received) == 1


async def test_insecure_dev_switch_does_not_bypass_a_configured_secret(make_stack: StackFactory) -> None:
    stack = await make_stack(elevenlabs_agent_insecure_dev=True)
    response = await stack.call_tool({"tool_name": "code_task", "conversation_id": "c1", "prompt": "x"}, headers={})
    assert_json_error(response, 401)
    assert stack.runner.received == []


# --- cursor-runner down, slow, failing -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["down", "slow", "unauthorized", "error500", "error503"])
async def test_dispatch_failure_answers_fast_and_marks_task_failed(make_stack: StackFactory, mode: str) -> None:
    overrides: dict[str, Any] = {}
    if mode == "down":
        overrides["cursor_runner_url"] = f"http://127.0.0.1:{closed_port()}"
    if mode == "slow":
        overrides["dispatch_timeout_seconds"] = 0.5
    stack = await make_stack(**overrides)
    stack.runner.callback_kind = "none"
    if mode == "slow":
        stack.runner.answer_delay = 3.0
    elif mode == "unauthorized":
        stack.runner.secret = "a-different-secret"
    elif mode == "error500":
        stack.runner.answer_status = 500
    elif mode == "error503":
        stack.runner.answer_status = 503
    conversation_id, eleven_id, voice = await stack.live_conversation()
    failures_before = await failed_dispatches(stack)

    started = time.monotonic()
    response = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "Fix the flaky test"}
    )
    elapsed = time.monotonic() - started

    assert elapsed < stack.settings.dispatch_timeout_seconds + 2.0, elapsed
    assert response.status_code in (200, 502, 503), response.text
    reply = response.json()
    assert reply["success"] is False
    assert_speakable(reply)
    task_id = reply["taskId"]
    task = await stack.task(task_id)
    assert task["status"] == "failed"
    assert task.get("error")
    messages = await tool_messages(stack, conversation_id)
    assert [m["status"] for m in messages] == ["failed"]
    assert messages[0]["taskId"] == task_id
    assert await failed_dispatches(stack) == failures_before + 1
    await voice.close()


# --- bad input ---------------------------------------------------------------------------------------

BAD_BODIES: list[Any] = [
    pytest.param({"tool_name": "code_task", "tool_args": "fix it", "conversation_id": "c1"}, id="tool_args-string"),
    pytest.param({"tool_name": "code_task", "tool_args": ["fix it"], "conversation_id": "c1"}, id="tool_args-list"),
    pytest.param({"tool_name": "code_task", "tool_args": None, "conversation_id": "c1"}, id="tool_args-null"),
    pytest.param({"tool_name": "code_task", "conversation_id": "a:b*", "prompt": "x"}, id="conversation-id-chars"),
    pytest.param({"tool_name": "code_task", "conversation_id": "{x}", "prompt": "x"}, id="conversation-id-braces"),
    pytest.param({"tool_name": "code_task", "conversation_id": 12, "prompt": "x"}, id="conversation-id-number"),
    pytest.param({"tool_name": "code_task", "conversation_id": "c" * 200, "prompt": "x"}, id="conversation-id-long"),
    pytest.param({"tool_name": "code_task", "conversation_id": "c1"}, id="flat-no-prompt"),
    pytest.param({"tool_name": "code_task", "conversation_id": "c1", "prompt": "   "}, id="flat-blank-prompt"),
    pytest.param({"tool_name": "code_task", "conversation_id": "c1", "prompt": None}, id="flat-null-prompt"),
    pytest.param({"tool_name": "code_task", "tool_args": {}, "conversation_id": "c1"}, id="original-no-prompt"),
    pytest.param({"tool_name": "code_task", "prompt": "Fix it"}, id="no-conversation-id"),
    pytest.param({"tool_name": "code_task", "tool_args": {"prompt": "Fix it"}}, id="original-no-conversation-id"),
    pytest.param({"tool_name": "code task; rm", "conversation_id": "c1", "prompt": "x"}, id="tool-name-chars"),
    pytest.param({"tool_name": 7, "conversation_id": "c1", "prompt": "x"}, id="tool-name-number"),
    pytest.param(["code_task"], id="body-list"),
    pytest.param("code_task", id="body-string"),
    pytest.param({"tool_name": "get_task_status", "task_id": "a:b*"}, id="status-task-id-chars"),
    pytest.param({"tool_name": "get_task_status"}, id="status-nothing-to-look-up"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
async def test_bad_input_is_400_json(stack: Stack, body: Any) -> None:
    response = await stack.call_tool(body)
    assert_json_error(response, 400)
    assert stack.runner.received == []
    assert await task_keys(stack) == []


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"tool_name": "code_task", ', "application/json", 400),
        (b"", "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b'{"tool_name": "code_task"}', "text/plain", 415),
    ],
    ids=["malformed", "empty", "not-utf8", "wrong-content-type"],
)
async def test_unparsable_body_is_json_error(stack: Stack, content: bytes, content_type: str, status: int) -> None:
    response = await stack.http.post(
        "/agent-tools", content=content, headers={**stack.auth, "Content-Type": content_type}
    )
    assert_json_error(response, status)
    assert stack.runner.received == []


# --- get_task_status ---------------------------------------------------------------------------------


async def test_status_by_task_id_pending_then_completed(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    _, eleven_id, voice = await stack.live_conversation()
    task_id = await stack.start_task(eleven_id, "Make the parser faster")

    response = await stack.call_tool({"tool_name": "get_task_status", "task_id": task_id})
    assert response.status_code == 200, response.text
    pending = response.json()
    assert pending["status"] == "pending"
    pending_message = assert_speakable(pending)
    assert "tokenHash" not in response.text
    assert (await stack.task(task_id))["tokenHash"] not in response.text

    await post_callback(stack, stack.runner.received[0])

    # The same question in the original shape, and through the path: the answer is now the result.
    response = await stack.call_tool(
        {
            "agent_id": "agent_test",
            "session_id": "s1",
            "tool_name": "get_task_status",
            "tool_args": {"task_id": task_id},
        }
    )
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == "completed"
    assert assert_speakable(done) != pending_message
    assert "All tests pass" in response.text  # the result itself is in the answer
    response = await stack.call_tool({"task_id": task_id}, path="/agent-tools/get_task_status")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert len(stack.runner.received) == 1  # a status question dispatches nothing
    await voice.close()


async def test_status_of_unknown_task(stack: Stack) -> None:
    unknown = str(uuid.uuid4())
    response = await stack.call_tool({"tool_name": "get_task_status", "task_id": unknown})
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply.get("status") not in ("pending", "completed", "failed")
    assert_speakable(reply)
    assert await stack.redis.exists(f"cursor_task:{unknown}") == 0
    assert stack.runner.received == []


async def test_status_by_conversation_lists_latest_tasks(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    _, eleven_id, voice = await stack.live_conversation()
    first = await stack.start_task(eleven_id, "First task")
    second = await stack.start_task(eleven_id, "Second task")
    await post_callback(stack, stack.runner.received[0])  # the first one finished

    response = await stack.call_tool({"tool_name": "get_task_status", "conversation_id": eleven_id})
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["success"] is True
    assert_speakable(reply)
    by_id = {t["taskId"]: t["status"] for t in reply["tasks"]}
    assert by_id == {first: "completed", second: "pending"}
    assert reply["tasks"][0]["taskId"] == second  # newest first
    assert len(stack.runner.received) == 2
    await voice.close()


async def test_status_by_conversation_without_tasks(stack: Stack) -> None:
    _, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool({"tool_name": "get_task_status", "conversation_id": eleven_id})
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["tasks"] == []
    assert_speakable(reply)
    await voice.close()
