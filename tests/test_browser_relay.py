"""relay.js in a real browser with the official ElevenLabs SDK (`@elevenlabs/client`, pinned in
tests/browser/package-lock.json): results reach the voice conversation once, through reloads, closed
pages, a service restart, a Redis outage and failing acknowledgements; the relay stops when the
conversation ends. The stack is in tests/browser_harness.py.

Each test is bounded (well under a minute) and loopback-only. "Not forwarded again" is checked after
the relay has demonstrably caught up: a later result arrives, and the earlier one still has one
contextual_update in all conversations.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from elevenlabs_agent import __version__
from elevenlabs_agent.redis.server import RedisServer
from tests.browser_harness import BROWSER_DIR, BrowserStack, browser_stack, percentile, sdk_version
from tests.conftest import StackFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
async def stack(redis: aioredis.Redis, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[BrowserStack]:
    """Here `stack` is the browser stack (conftest's in-process `stack` is not used in this module)."""
    async with browser_stack(tmp_path, redis_server.url) as stack:
        yield stack
        await assert_clean(stack)


async def assert_clean(stack: BrowserStack) -> None:
    """No open page saw an error (SDK, relay or page), and every SDK conversation spoke the stand-in's
    protocol: no protocol error, pings answered."""
    for page in stack.pages:
        if not page.is_closed():
            assert (await stack.state(page))["errors"] == [], stack.console[-20:]
    for conversation in stack.elevenlabs.conversations.values():
        assert conversation.protocol_errors == [], conversation.protocol_errors
        assert conversation.subprotocol == "convai"
        assert conversation.sdk == ("js_sdk", sdk_version()), conversation.initiation
        if conversation.pings_sent >= 2:  # the last one may still be on its way back
            assert len(conversation.pongs) >= conversation.pings_sent - 1, (conversation.pings_sent, conversation.pongs)


async def test_relay_module_is_served_for_browsers(stack: BrowserStack) -> None:
    origin = {"Origin": stack.page_origin}
    async with httpx.AsyncClient(base_url=stack.service.url) as http:
        js = await http.get("/agent-conversations/relay.js", headers=origin)
        types = await http.get("/agent-conversations/relay.d.ts", headers=origin)
        again = await http.get("/agent-conversations/relay.js", headers={"If-None-Match": js.headers["etag"]})
        other = await http.get("/agent-conversations/relay.js", headers={"Origin": "http://127.0.0.2:1"})
    assert js.status_code == 200 and js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "export function startRelay" in js.text
    code = [line for line in js.text.splitlines() if not line.lstrip().startswith("//")]
    assert not [line for line in code if "import" in line or "require(" in line]  # no dependencies
    assert js.headers["access-control-allow-origin"] == stack.page_origin
    assert js.headers["cache-control"] == "public, max-age=300" and js.headers["etag"].startswith(f'"{__version__}-')
    assert js.headers["x-content-type-options"] == "nosniff"
    assert types.status_code == 200 and types.headers["content-type"].startswith("application/typescript")
    assert "export declare function startRelay" in types.text and types.headers["etag"] != js.headers["etag"]
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == js.headers["etag"]
    assert "access-control-allow-origin" not in other.headers  # CORS like the API: listed origins only


async def test_relay_module_is_served_with_the_feature_flag_off(make_stack: StackFactory) -> None:
    """A page importing relay.js must load even while the service is disabled (its relay retries)."""
    stack = await make_stack(elevenlabs_agent_enabled=False)
    js = await stack.http.get("/agent-conversations/relay.js")
    assert js.status_code == 200 and "export function startRelay" in js.text
    weak = await stack.http.get(
        "/agent-conversations/relay.js", headers={"If-None-Match": f'"x", W/{js.headers["etag"]}'}
    )
    assert weak.status_code == 304
    head = await stack.http.head("/agent-conversations/relay.d.ts")
    assert head.status_code == 200 and head.headers["etag"] and head.content == b""
    assert (await stack.http.get("/agent-conversations/api/list")).status_code == 503


def test_relay_types_fit_the_sdk() -> None:
    """relay.d.ts accepts the SDK's own Conversation types (tsc on tests/browser/types-check.ts)."""
    result = subprocess.run(
        [str(BROWSER_DIR / "node_modules" / ".bin" / "tsc"), "-p", str(BROWSER_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_result_reaches_the_sdk_conversation_once(stack: BrowserStack) -> None:
    conversation_id = await stack.create_conversation()
    page = await stack.open_page(conversation_id)
    eleven_id = await stack.eleven_id(page)

    # A tool call and its callback: one contextual_update with the result, keyed by the task id.
    task = await stack.tool_call(eleven_id, "Add a health check endpoint")
    await stack.callback(task)
    update = await stack.wait_update(eleven_id, task.task_id)
    assert update["text"].startswith(f"Update on code task {task.task_id}: The task finished successfully.")
    assert "Add a health check endpoint" in update["text"]
    await wait_acknowledged(stack, conversation_id)
    assert [u for _, u in stack.all_updates_for(task.task_id)] == [update]
    assert stack.conversation(eleven_id).user_messages == []  # speak is off
    assert (await stack.state(page))["results"][0]["taskId"] == task.task_id
    # A voice session: the fake microphone streams audio chunks to the stand-in.
    assert stack.conversation(eleven_id).audio_chunks > 0 and stack.conversation(eleven_id).audio_bytes > 0

    # Reload: a new SDK session; the acknowledged result is not forwarded again.
    opened = stack.sse_connections(conversation_id)
    await page.reload()
    await stack.wait_phase(page, "relaying")
    reloaded_id = await stack.eleven_id(page)
    assert reloaded_id != eleven_id
    await stack.relay_connected(conversation_id, opened)
    second = await stack.tool_call(reloaded_id, "Second task")
    await stack.callback(second)
    await stack.wait_update(reloaded_id, second.task_id)
    await wait_acknowledged(stack, conversation_id)
    assert len(stack.all_updates_for(task.task_id)) == 1
    assert len(stack.all_updates_for(second.task_id)) == 1

    # A result stored while no page is open waits, and the next page forwards it once.
    await page.close()
    third = await stack.tool_call(reloaded_id, "Third task, finished while the page is closed")
    await stack.callback(third)
    assert await stack.pending(conversation_id) == [third.task_id]
    reopened = await stack.open_page(conversation_id)
    reopened_id = await stack.eleven_id(reopened)
    await stack.wait_update(reopened_id, third.task_id)
    await wait_acknowledged(stack, conversation_id)
    assert [c for c, _ in stack.all_updates_for(third.task_id)] == [reopened_id]
    assert len(stack.all_updates_for(task.task_id)) == len(stack.all_updates_for(second.task_id)) == 1


async def wait_acknowledged(stack: BrowserStack, conversation_id: str, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while await stack.pending(conversation_id):
            await asyncio.sleep(0.02)


async def test_speak_also_sends_a_user_message(stack: BrowserStack) -> None:
    conversation_id = await stack.create_conversation()
    page = await stack.open_page(conversation_id, speak=True)
    eleven_id = await stack.eleven_id(page)
    task = await stack.tool_call(eleven_id, "Run the tests")
    await stack.callback(task)
    await stack.wait_update(eleven_id, task.task_id)
    messages = await stack.elevenlabs.wait_frames(eleven_id, "user_message")
    assert messages == [{"type": "user_message", "text": "A code task just finished. Please tell me its result now."}]
    conversation = stack.conversation(eleven_id)
    # The contextual update went first, so the agent knows the result when it is asked to tell it.
    assert conversation.times_of("contextual_update")[0] <= conversation.times_of("user_message")[0]
    await wait_acknowledged(stack, conversation_id)
    # The stand-in answered as the agent would, and the SDK is still connected.
    assert await page.evaluate("window.relayTest.disconnects") == []


async def test_relay_stops_when_the_conversation_ends(stack: BrowserStack) -> None:
    conversation_id = await stack.create_conversation()
    opened = stack.sse_connections(conversation_id)
    page = await stack.open_page(conversation_id, nostop=True)  # the page does not call stop(): relay.js notices
    eleven_id = await stack.eleven_id(page)
    await stack.relay_connected(conversation_id, opened)
    await page.evaluate("window.relayConversation.endSession()")
    async with asyncio.timeout(10):  # the relay closes its event stream
        while not any(
            r.get("event") == "sse.disconnected" and r.get("conversationId") == conversation_id
            for r in stack.service.records()
        ):
            await asyncio.sleep(0.05)
    task = await stack.tool_call(eleven_id, "After the end")
    await stack.callback(task)
    await asyncio.sleep(1.0)
    assert stack.all_updates_for(task.task_id) == []
    assert await stack.pending(conversation_id) == [task.task_id]  # waits for the next session
    assert await page.evaluate("window.relayTest.disconnects") == ["user"]


async def test_relay_resumes_after_a_service_restart(stack: BrowserStack) -> None:
    conversation_id = await stack.create_conversation()
    page = await stack.open_page(conversation_id)
    eleven_id = await stack.eleven_id(page)
    before = await stack.tool_call(eleven_id, "Before the restart")
    await stack.callback(before)
    await stack.wait_update(eleven_id, before.task_id)
    await wait_acknowledged(stack, conversation_id)

    await stack.restart_service()  # SIGTERM: the stream ends; EventSource reconnects with Last-Event-ID
    after = await stack.tool_call(eleven_id, "After the restart")
    await stack.callback(after)
    await stack.wait_update(eleven_id, after.task_id, timeout=20)
    await wait_acknowledged(stack, conversation_id)
    assert len(stack.all_updates_for(before.task_id)) == 1
    assert len(stack.all_updates_for(after.task_id)) == 1
    resumed = [r for r in stack.service.records() if r.get("event") == "sse.connected"]
    assert resumed and all(r["resume"] for r in resumed), resumed  # with Last-Event-ID
    assert await page.evaluate("window.relayTest.disconnects") == []  # the SDK session lived on


async def test_relay_reopens_its_stream_after_a_redis_outage(stack: BrowserStack, redis_server: RedisServer) -> None:
    """While Redis is down the service answers the stream's reconnection with 503, and EventSource gives
    up for good on an HTTP error: relay.js opens a new stream (with backoff, resuming from its last
    event id) until Redis is back, and the next result arrives once."""
    conversation_id = await stack.create_conversation()
    page = await stack.open_page(conversation_id)
    eleven_id = await stack.eleven_id(page)
    before = await stack.tool_call(eleven_id, "Before the outage")
    await stack.callback(before)
    await stack.wait_update(eleven_id, before.task_id)
    await wait_acknowledged(stack, conversation_id)
    streams: list[int] = []
    page.on(
        "response", lambda r: streams.append(r.status) if "/events?" in r.url or r.url.endswith("/events") else None
    )

    redis_server.stop()
    async with asyncio.timeout(20):  # the stream ends, EventSource reconnects and is refused
        while 503 not in streams:
            await asyncio.sleep(0.05)
    redis_server.start()
    after = await stack.tool_call(eleven_id, "After the outage")
    await stack.callback(after)
    await stack.wait_update(eleven_id, after.task_id, timeout=40)
    await wait_acknowledged(stack, conversation_id)
    async with asyncio.timeout(5):  # Playwright reports the response apart from what the stand-in reads
        while streams[-1:] != [200]:
            await asyncio.sleep(0.01)
    assert len(stack.all_updates_for(before.task_id)) == len(stack.all_updates_for(after.task_id)) == 1
    reopened = [r for r in stack.service.records() if r.get("event") == "sse.connected"][-1]
    assert reopened["resume"] is True  # ?lastEventId= on the new EventSource


async def test_failed_acknowledgements_are_retried(
    redis: aioredis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    # A short Redis timeout, so that a write Redis holds back makes the service answer 503 at once.
    async with browser_stack(tmp_path, redis_server.url, REDIS_TIMEOUT_SECONDS="0.5") as stack:
        conversation_id = await stack.create_conversation()
        page = await stack.open_page(conversation_id, hold=True)
        eleven_id = await stack.eleven_id(page)
        task = await stack.tool_call(eleven_id, "Acknowledged late")
        await stack.callback(task)
        acks: list[int] = []
        page.on("response", lambda r: acks.append(r.status) if r.url.endswith("/events/ack") else None)

        # Redis holds back every write for 2 s: the relay starts, reads the waiting result and forwards
        # it, but its acknowledgement (a write) answers 503 until the pause ends; it is retried with
        # backoff until it goes through.
        await redis.execute_command("CLIENT", "PAUSE", "2000", "WRITE")
        paused = time.monotonic()
        await stack.go(page)
        await stack.wait_update(eleven_id, task.task_id)
        await wait_acknowledged(stack, conversation_id)
        assert time.monotonic() - paused > 1.9
        async with asyncio.timeout(5):  # the answer reaches the page a moment after Redis has the write
            while acks[-1:] != [200]:
                await asyncio.sleep(0.01)
        assert acks[0] == 503 and acks.count(200) == 1 and len(acks) >= 3, acks
        assert len(stack.all_updates_for(task.task_id)) == 1  # retried acknowledgements, never a second forward
        assert stack.conversation(eleven_id).contextual_updates[0]["context_id"] == task.task_id
        await assert_clean(stack)


async def test_callback_to_contextual_update_latency(stack: BrowserStack, capsys: pytest.CaptureFixture[str]) -> None:
    """50 results one after another into one SDK conversation: each arrives once; prints p50/p99."""
    conversation_id = await stack.create_conversation()
    page = await stack.open_page(conversation_id)
    eleven_id = await stack.eleven_id(page)
    latencies = []
    for n in range(50):
        task = await stack.tool_call(eleven_id, f"Latency probe {n}")
        sent = await stack.callback(task)
        await stack.wait_update(eleven_id, task.task_id)
        arrived = stack.conversation(eleven_id).times_of("contextual_update")[-1]
        latencies.append((arrived - sent) * 1000)
    await wait_acknowledged(stack, conversation_id)
    assert len(stack.conversation(eleven_id).contextual_updates) == 50
    with capsys.disabled():
        print(
            f"\n  callback -> contextual_update in Chromium with @elevenlabs/client {sdk_version()}: "
            f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, "
            f"max {max(latencies):.1f} ms over {len(latencies)} results"
        )
