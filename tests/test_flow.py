"""The whole loop: tool call -> task -> cursor-runner callback -> delivery into the live conversation."""

from __future__ import annotations

import orjson

from tests.conftest import Stack, eventually


async def test_tool_call_dispatches_and_result_reaches_live_conversation(stack: Stack) -> None:
    conversation_id, eleven_id, voice = await stack.live_conversation()
    response = await stack.call_tool(
        {"tool_name": "code_task", "conversation_id": eleven_id, "prompt": "Fix the login bug"}
    )
    assert response.status_code == 200
    reply = response.json()
    assert reply["success"] is True and reply["status"] == "started"
    assert reply["message"]  # speakable
    task_id = reply["taskId"]
    assert reply["requestId"] == task_id

    # cursor-runner got our task id as `id`, our conversation, and a per-task callback secret.
    sent = stack.runner.received[0]
    assert sent["id"] == task_id
    assert sent["prompt"] == "Fix the login bug"
    assert sent["conversationId"] == conversation_id
    assert sent["queueType"] == "api"
    assert sent["callbackUrl"].startswith(f"{stack.service.url}/callback?secret=")

    updates = await stack.elevenlabs.wait_update(eleven_id)
    assert updates == [{"type": "contextual_update", "context_id": task_id, "text": updates[0]["text"]}]
    assert "finished successfully" in updates[0]["text"]
    assert stack.runner.callbacks[0][0] == 200

    async def delivered() -> bool:
        return (await stack.task(task_id)).get("delivery") == "delivered"

    await eventually(delivered)  # confirmed after the push socket closed cleanly
    task = await stack.task(task_id)
    assert task["status"] == "completed"
    assert task["delivery"] == "delivered" and task["deliveredVia"] == "websocket"
    assert orjson.loads(task["result"])["exitCode"] == 0
    conversation = (await stack.http.get(f"/agent-conversations/api/{conversation_id}")).json()
    tool_messages = [m for m in conversation["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 1  # the pending message was replaced, not duplicated
    assert tool_messages[0]["status"] == "completed"
    assert tool_messages[0]["toolName"] == "code_task"
    assert "All tests pass" in tool_messages[0]["toolOutput"]
    assert await stack.redis.hlen(f"elevenlabs:pending:{{{conversation_id}}}") == 0
    await voice.close()
