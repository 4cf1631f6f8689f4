"""POST /callback (SPEC §4, §5): auth per task, outcomes, bad bodies, idempotency and delivery timing.

Callbacks come either from the fake cursor-runner (which strips `?secret=` from the callback URL and sends it
back as headers, as the real one does) or are POSTed here by hand with the same headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from elevenlabs_agent.sim.cursor_runner import CallbackKind, callback_body, split_secret
from tests.conftest import Stack, StackFactory, eventually
from tests.helpers import assert_json_error


def secret_headers(secret: str) -> dict[str, str]:
    return {"X-Webhook-Secret": secret, "X-Cursor-Runner-Secret": secret}


class Dispatched:
    """A task the service dispatched to the fake cursor-runner, and what cursor-runner needs to call back."""

    def __init__(self, sent: dict[str, Any]) -> None:
        self.task_id: str = sent["id"]
        self.prompt: str = sent["prompt"]
        url, secret = split_secret(sent["callbackUrl"])
        assert secret
        self.url = url
        self.secret = secret

    def body(self, kind: CallbackKind = "completion") -> dict[str, Any]:
        return callback_body(kind, self.task_id, self.prompt)


async def dispatch(stack: Stack, eleven_id: str, prompt: str = "Fix the login bug") -> Dispatched:
    """Start a code task whose callback the test sends itself (the fake runner must not send one)."""
    assert stack.runner.callback_kind == "none"
    before = len(stack.runner.received)
    response = await stack.call_tool({"tool_name": "code_task", "conversation_id": eleven_id, "prompt": prompt})
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    assert len(stack.runner.received) == before + 1
    sent = stack.runner.received[-1]
    assert sent["id"] == response.json()["taskId"]
    return Dispatched(sent)


async def post(stack: Stack, task: Dispatched, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return await stack.http.post(
        task.url, json=body, headers=secret_headers(task.secret) if headers is None else headers
    )


async def tool_messages(stack: Stack, conversation_id: str) -> list[dict[str, Any]]:
    response = await stack.http.get(f"/agent-conversations/api/{conversation_id}")
    assert response.status_code == 200, response.text
    return [m for m in response.json()["messages"] if m["role"] == "tool"]


def updates(stack: Stack, eleven_id: str) -> list[dict[str, Any]]:
    conversation = stack.elevenlabs.conversations.get(eleven_id)
    return conversation.contextual_updates if conversation else []


async def stream_length(stack: Stack, conversation_id: str) -> int:
    return int(await stack.redis.xlen(f"elevenlabs:events:{{{conversation_id}}}"))


async def pending_results(stack: Stack, conversation_id: str) -> dict[str, str]:
    return await stack.redis.hgetall(f"elevenlabs:pending:{{{conversation_id}}}")  # type: ignore[no-any-return]


# --- outcomes ----------------------------------------------------------------------------------------


async def test_completion_persists_result_and_delivers(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    conversation_id, eleven_id, voice = await stack.live_conversation()
    task = await dispatch(stack, eleven_id, "Fix the login bug")

    response = await post(stack, task, task.body("completion"))
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    assert response.json().get("duplicate") is not True

    stored = await stack.task(task.task_id)
    assert stored["status"] == "completed"
    assert stored["completedAt"]
    result = orjson.loads(stored["result"])
    assert result["exitCode"] == 0
    assert "All tests pass" in result["output"]
    assert result["repository"] == "demo-repo"
    messages = await tool_messages(stack, conversation_id)
    assert len(messages) == 1
    assert messages[0]["status"] == "completed" and messages[0]["taskId"] == task.task_id
    assert "All tests pass" in messages[0]["toolOutput"]

    delivered = await stack.elevenlabs.wait_update(eleven_id)
    assert delivered[0]["context_id"] == task.task_id
    assert "success" in delivered[0]["text"].lower()
    await eventually(lambda: _delivered(stack, task.task_id))
    await voice.close()


async def _delivered(stack: Stack, task_id: str) -> bool:
    return (await stack.task(task_id)).get("delivery") == "delivered"


@pytest.mark.parametrize("kind", ["nonzero_exit", "validation_error", "crash"])
async def test_failure_outcomes_mark_task_failed(stack: Stack, kind: CallbackKind) -> None:
    """Through the fake cursor-runner: success:true with exitCode 2, a validation error, a crash."""
    stack.runner.callback_kind = kind
    conversation_id, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "Run the test suite"}
    )
    assert response.status_code == 200 and response.json()["success"] is True, response.text
    task_id = response.json()["taskId"]
    await stack.runner.wait_callbacks(1)
    assert stack.runner.callbacks[0][0] == 200, stack.runner.callbacks

    stored = await stack.task(task_id)
    assert stored["status"] == "failed"
    assert "fail" in stored["summary"].lower()
    result = orjson.loads(stored["result"])
    assert result["success"] is (kind == "nonzero_exit")
    assert result["error"] == callback_body(kind, task_id)["error"]
    if kind == "nonzero_exit":
        assert result["exitCode"] == 2
    messages = await tool_messages(stack, conversation_id)
    assert [m["status"] for m in messages] == ["failed"]
    assert "fail" in messages[0]["content"].lower()

    delivered = await stack.elevenlabs.wait_update(eleven_id)
    assert delivered[0]["context_id"] == task_id
    assert "fail" in delivered[0]["text"].lower()
    assert "finished successfully" not in delivered[0]["text"]
    await voice.close()


# --- forged callbacks --------------------------------------------------------------------------------


async def test_wrong_secret_is_401_and_changes_nothing(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    conversation_id, eleven_id, voice = await stack.live_conversation()
    task = await dispatch(stack, eleven_id)
    before = await stack.task(task.task_id)
    messages_before = await tool_messages(stack, conversation_id)

    for headers in (
        secret_headers("forged-" + task.secret[7:]),
        {"X-Webhook-Secret": task.secret[:-1]},
        {"X-Cursor-Runner-Secret": task.secret + "x"},
        {"Authorization": "Bearer not-it"},
    ):
        response = await post(stack, task, task.body("completion"), headers)
        assert_json_error(response, 401)
        assert task.secret not in response.text

    await stack.deliveries_settled()
    assert await stack.task(task.task_id) == before
    assert await tool_messages(stack, conversation_id) == messages_before
    assert await stream_length(stack, conversation_id) == 0
    assert updates(stack, eleven_id) == []

    # The genuine callback is still taken afterwards: the forgeries burnt nothing.
    response = await post(stack, task, task.body("completion"))
    assert response.status_code == 200 and response.json().get("duplicate") is not True, response.text
    assert (await stack.task(task.task_id))["status"] == "completed"
    await voice.close()


async def test_missing_secret_is_401(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    _, eleven_id, voice = await stack.live_conversation()
    task = await dispatch(stack, eleven_id)
    before = await stack.task(task.task_id)
    for headers in ({}, {"X-Webhook-Secret": ""}, {"Authorization": "Bearer"}):
        response = await post(stack, task, task.body("completion"), headers)
        assert_json_error(response, 401)
    assert await stack.task(task.task_id) == before
    await voice.close()


async def test_secret_of_another_task_is_401(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    conversation_id, eleven_id, voice = await stack.live_conversation()
    first = await dispatch(stack, eleven_id, "First")
    second = await dispatch(stack, eleven_id, "Second")
    assert first.secret != second.secret
    first_before, second_before = await stack.task(first.task_id), await stack.task(second.task_id)

    response = await post(stack, second, second.body("completion"), secret_headers(first.secret))
    assert_json_error(response, 401)
    response = await stack.http.post(
        first.url + "?secret=" + first.secret, json=second.body("completion"), headers={}
    )  # the secret in the query, as a runner that does not strip it would send it
    assert_json_error(response, 401)

    assert await stack.task(first.task_id) == first_before
    assert await stack.task(second.task_id) == second_before
    assert await stream_length(stack, conversation_id) == 0
    await voice.close()


async def test_shared_webhook_secret_is_refused_by_default(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    _, eleven_id, voice = await stack.live_conversation()
    task = await dispatch(stack, eleven_id)
    before = await stack.task(task.task_id)
    response = await post(stack, task, task.body("completion"), secret_headers(stack.webhook_secret))
    assert_json_error(response, 401)
    assert await stack.task(task.task_id) == before
    await voice.close()


async def test_shared_webhook_secret_is_accepted_when_configured(make_stack: StackFactory) -> None:
    stack = await make_stack(callback_accept_webhook_secret=True)
    stack.runner.callback_kind = "none"
    _, eleven_id, voice = await stack.live_conversation()
    task = await dispatch(stack, eleven_id)

    response = await post(stack, task, task.body("completion"), secret_headers("still-wrong"))
    assert_json_error(response, 401)
    assert (await stack.task(task.task_id))["status"] == "pending"

    response = await post(stack, task, task.body("completion"), secret_headers(stack.webhook_secret))
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    assert (await stack.task(task.task_id))["status"] == "completed"
    await stack.elevenlabs.wait_update(eleven_id)
    await voice.close()


# --- unknown tasks and bad bodies --------------------------------------------------------------------


async def test_unknown_task_is_200_with_a_note(stack: Stack) -> None:
    unknown = str(uuid.uuid4())
    response = await stack.http.post(
        "/callback", json=callback_body("completion", unknown), headers=secret_headers("some-secret")
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body.get("note"), str) and body["note"]
    assert await stack.redis.exists(f"cursor_task:{unknown}") == 0
    assert [k async for k in stack.redis.scan_iter(match="elevenlabs:events:*")] == []
    assert [k async for k in stack.redis.scan_iter(match="elevenlabs:pending:*")] == []


BAD_CALLBACK_BODIES: list[Any] = [
    pytest.param(lambda t: {**t, "requestId": "a:b*"}, id="requestId-chars"),
    pytest.param(lambda t: {**t, "requestId": "{x}"}, id="requestId-braces"),
    pytest.param(lambda t: {**t, "requestId": 12}, id="requestId-number"),
    pytest.param(lambda t: {k: v for k, v in t.items() if k != "requestId"}, id="requestId-missing"),
    pytest.param(lambda t: {**t, "success": "true"}, id="success-string"),
    pytest.param(lambda t: {**t, "success": 1}, id="success-int"),
    pytest.param(lambda t: {k: v for k, v in t.items() if k != "success"}, id="success-missing"),
    pytest.param(lambda t: {**t, "exitCode": "0"}, id="exitCode-string"),
    pytest.param(lambda t: {**t, "exitCode": 0.5}, id="exitCode-float"),
    pytest.param(lambda t: {**t, "exitCode": True}, id="exitCode-bool"),
    pytest.param(lambda t: {**t, "output": ["a"]}, id="output-list"),
    pytest.param(lambda t: [t], id="body-list"),
]


@pytest.mark.parametrize("mutate", BAD_CALLBACK_BODIES)
async def test_invalid_callback_body_is_400(stack: Stack, mutate: Any) -> None:
    stack.runner.callback_kind = "none"
    _, eleven_id, voice = await stack.live_conversation()
    task = await dispatch(stack, eleven_id)
    before = await stack.task(task.task_id)
    response = await post(stack, task, mutate(task.body("completion")))
    assert_json_error(response, 400)
    assert await stack.task(task.task_id) == before
    await voice.close()


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"success": true, "requestId": ', "application/json", 400),
        (b"", "application/json", 400),
        (b"   ", "application/json", 400),
        (b"null", "application/json", 400),
        (b'{"success": true}', "text/plain", 415),
    ],
    ids=["malformed", "empty", "blank", "null", "wrong-content-type"],
)
async def test_unparsable_callback_is_json_error(stack: Stack, content: bytes, content_type: str, status: int) -> None:
    stack.runner.callback_kind = "none"
    _, eleven_id, voice = await stack.live_conversation()
    task = await dispatch(stack, eleven_id)
    before = await stack.task(task.task_id)
    response = await stack.http.post(
        task.url, content=content, headers={**secret_headers(task.secret), "Content-Type": content_type}
    )
    assert_json_error(response, status)
    assert await stack.task(task.task_id) == before
    await voice.close()


# --- idempotency -------------------------------------------------------------------------------------


async def test_repeated_callback_is_a_duplicate_and_delivers_once(stack: Stack) -> None:
    stack.runner.callback_repeats = 2
    conversation_id, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool({"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "Fix it"})
    task_id = response.json()["taskId"]
    await stack.runner.wait_callbacks(2)
    (first_status, first), (second_status, second) = stack.runner.callbacks
    assert first_status == 200 and first.get("duplicate") is not True, first
    assert second_status == 200 and second["duplicate"] is True, second

    await stack.elevenlabs.wait_update(eleven_id)
    await stack.deliveries_settled()
    assert len(updates(stack, eleven_id)) == 1
    assert updates(stack, eleven_id)[0]["context_id"] == task_id
    messages = await tool_messages(stack, conversation_id)
    assert len(messages) == 1 and messages[0]["status"] == "completed"
    assert await stream_length(stack, conversation_id) == 1
    await voice.close()


async def test_duplicate_with_a_different_outcome_changes_nothing(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    conversation_id, eleven_id, voice = await stack.live_conversation()
    task = await dispatch(stack, eleven_id)
    assert (await post(stack, task, task.body("completion"))).status_code == 200
    after_first = await stack.task(task.task_id)

    response = await post(stack, task, task.body("crash"))
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is True
    stored = await stack.task(task.task_id)
    assert stored["status"] == "completed"
    assert stored["result"] == after_first["result"]
    await stack.elevenlabs.wait_update(eleven_id)
    await stack.deliveries_settled()
    assert len(updates(stack, eleven_id)) == 1
    assert [m["status"] for m in await tool_messages(stack, conversation_id)] == ["completed"]
    await voice.close()


async def test_concurrent_duplicates_accept_exactly_one(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    conversation_id, eleven_id, voice = await stack.live_conversation()
    task = await dispatch(stack, eleven_id)
    body = task.body("completion")

    responses = await asyncio.gather(*(post(stack, task, body) for _ in range(20)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    accepted = [r.json() for r in responses if r.json().get("duplicate") is not True]
    assert len(accepted) == 1, accepted
    assert accepted[0]["status"] == "completed"

    await stack.elevenlabs.wait_update(eleven_id)
    await stack.deliveries_settled()
    assert len(updates(stack, eleven_id)) == 1
    assert await stream_length(stack, conversation_id) == 1
    assert len(await tool_messages(stack, conversation_id)) == 1
    assert (await stack.task(task.task_id))["status"] == "completed"
    await voice.close()


# --- timing --------------------------------------------------------------------------------------------


async def test_callback_before_dispatch_returned(stack: Stack) -> None:
    stack.runner.callback_before_answer = True
    conversation_id, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool({"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "Be quick"})
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    task_id = response.json()["taskId"]
    # The callback was answered before the webhook's dispatch call returned.
    assert len(stack.runner.callbacks) == 1
    status, body = stack.runner.callbacks[0]
    assert status == 200 and body.get("duplicate") is not True, body

    delivered = await stack.elevenlabs.wait_update(eleven_id)
    assert delivered[0]["context_id"] == task_id
    await stack.deliveries_settled()
    stored = await stack.task(task_id)
    assert stored["status"] == "completed"
    assert orjson.loads(stored["result"])["exitCode"] == 0
    assert [m["status"] for m in await tool_messages(stack, conversation_id)] == ["completed"]
    await voice.close()


@pytest.mark.slow
async def test_callback_after_dispatch_timed_out_is_accepted_and_delivered(make_stack: StackFactory) -> None:
    stack = await make_stack(dispatch_timeout_seconds=0.5)
    stack.runner.answer_delay = 1.5  # cursor-runner queues the job, but answers too late
    conversation_id, eleven_id, voice = await stack.live_conversation()
    started = time.monotonic()
    response = await stack.call_tool({"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "Slow one"})
    assert time.monotonic() - started < 0.5 + 2.0
    assert response.json()["success"] is False
    task_id = response.json()["taskId"]
    assert (await stack.task(task_id))["status"] == "failed"

    await stack.runner.wait_callbacks(1)
    status, body = stack.runner.callbacks[0]
    assert status == 200 and body.get("duplicate") is not True, body
    delivered = await stack.elevenlabs.wait_update(eleven_id)
    assert delivered[0]["context_id"] == task_id
    assert (await stack.task(task_id))["status"] == "completed"
    assert [m["status"] for m in await tool_messages(stack, conversation_id)] == ["completed"]
    await voice.close()


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[int]:
    """A loopback TCP port that accepts connections and never answers (a push bridge that hangs)."""
    release = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        release.set()
        server.close()
        await server.wait_closed()


@pytest.mark.slow
async def test_callback_answers_without_waiting_for_delivery(make_stack: StackFactory) -> None:
    stack = await make_stack(push_timeout_seconds=3.0)
    stack.runner.callback_kind = "none"
    async with black_hole() as port:
        conversation_id = await stack.create_conversation()
        response = await stack.http.post(
            f"/agent-conversations/api/{conversation_id}/session",
            json={
                "sessionUrl": f"{stack.elevenlabs_server.ws_url}/v1/convai/conversation?agent_id=x",
                "pushUrl": f"ws://127.0.0.1:{port}/push/stuck",
                "metadata": {"elevenConversationId": "conv_stuck"},
            },
        )
        assert response.status_code == 200, response.text
        task = await dispatch(stack, "conv_stuck")

        started = time.monotonic()
        response = await post(stack, task, task.body("completion"))
        assert time.monotonic() - started < 1.0  # the push would take up to 3 s
        assert response.status_code == 200, response.text
        # Persisted before the acknowledgement, and not lost when the push then fails.
        assert (await stack.task(task.task_id))["status"] == "completed"
        assert [m["status"] for m in await tool_messages(stack, conversation_id)] == ["completed"]
        await stack.deliveries_settled()  # the push gives up after push_timeout_seconds
        assert task.task_id in await pending_results(stack, conversation_id)
        assert (await stack.task(task.task_id)).get("delivery") != "delivered"


@pytest.mark.slow
async def test_result_pushed_to_a_bridge_that_never_reads_stays_pending(make_stack: StackFactory) -> None:
    """SPEC §5: delivered only when the channel confirms it. A bridge that accepts the socket but never
    reads the frame has not accepted the result; it must stay pending for the next session."""
    stack = await make_stack(push_timeout_seconds=1.0)
    stack.elevenlabs.push_mode = "hang"
    conversation_id, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool({"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "Fix it"})
    task_id = response.json()["taskId"]
    await stack.runner.wait_callbacks(1)
    assert stack.runner.callbacks[0][0] == 200
    await stack.deliveries_settled()  # the push gives up after push_timeout_seconds
    assert updates(stack, eleven_id) == []  # nothing reached the conversation ...
    assert (await stack.task(task_id)).get("delivery") != "delivered"  # ... so it is not delivered
    assert task_id in await pending_results(stack, conversation_id)
    await voice.close()


async def test_expired_session_keeps_result_until_next_registration(stack: Stack) -> None:
    stack.runner.callback_kind = "none"
    conversation_id, eleven_id, voice = await stack.live_conversation()
    task = await dispatch(stack, eleven_id)
    assert await stack.redis.delete(f"elevenlabs:session:{conversation_id}") == 1  # the session expired

    response = await post(stack, task, task.body("completion"))
    assert response.status_code == 200, response.text
    await stack.deliveries_settled()
    assert updates(stack, eleven_id) == []
    pending = await pending_results(stack, conversation_id)
    assert list(pending) == [task.task_id]
    assert orjson.loads(pending[task.task_id])["taskId"] == task.task_id
    stored = await stack.task(task.task_id)
    assert stored["status"] == "completed" and stored.get("delivery") != "delivered"
    assert [m["status"] for m in await tool_messages(stack, conversation_id)] == ["completed"]

    response = await stack.register(conversation_id, eleven_id)  # the browser reconnects
    assert response.status_code == 200, response.text
    delivered = await stack.elevenlabs.wait_update(eleven_id)
    assert [u["context_id"] for u in delivered] == [task.task_id]
    assert "success" in delivered[0]["text"].lower()
    await eventually(lambda: _delivered(stack, task.task_id))
    assert await pending_results(stack, conversation_id) == {}
    await stack.deliveries_settled()
    assert len(updates(stack, eleven_id)) == 1
    await voice.close()
