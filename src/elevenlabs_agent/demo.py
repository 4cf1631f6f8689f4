"""`elevenlabs-agent demo`: the whole loop on one machine, with nothing from outside.

A real redis-server, the real service on a loopback port, a simulated ElevenLabs (signed URL API and
conversation WebSocket) and a simulated cursor-runner that really POSTs its callback. It plays the
browser and the agent, and succeeds only if the result reaches the simulated conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

from elevenlabs_agent import logging as agent_logging
from elevenlabs_agent.redis.server import RedisServer
from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner
from elevenlabs_agent.sim.elevenlabs import FakeElevenLabs
from elevenlabs_agent.sim.stack import Neighbours, service_stack

AGENT_ID = "agent_demo"


async def run_demo(timeout: float, echo: Callable[[str], Any] = print) -> bool:
    started = time.perf_counter()

    def step(text: str) -> None:
        echo(f"[{(time.perf_counter() - started) * 1000:8.1f} ms] {text}")

    agent_logging.configure("warning")
    with tempfile.TemporaryDirectory(prefix="elevenlabs-agent-demo-") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis")
        redis_server.start()
        step(f"redis-server started on 127.0.0.1:{redis_server.port} (AOF in {redis_server.directory})")
        try:
            return await asyncio.wait_for(_round_trip(redis_server.url, Path(tmp) / "spool", step), timeout)
        except TimeoutError:
            step(f"FAILED: no result reached the conversation within {timeout:.0f} s")
            return False
        finally:
            redis_server.stop()
            step("redis-server stopped")


async def _round_trip(redis_url: str, spool_dir: Path, step: Callable[[str], None]) -> bool:
    webhook_secret, runner_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    runner = FakeCursorRunner(secret=runner_secret, callback_delay=0.5)
    async with contextlib.AsyncExitStack() as stack:
        wired = await stack.enter_async_context(
            # log_level: the timeline is the demo's output; the service speaks only when something is wrong.
            # The spool goes into the demo's temporary directory, not the working one.
            service_stack(
                FakeElevenLabs(),
                runner,
                redis_url=redis_url,
                webhook_secret=webhook_secret,
                elevenlabs_agent_id=AGENT_ID,
                callback_spool_dir=str(spool_dir),
                log_level="warning",
            )
        )
        around = wired.around
        el_url, runner_url = around.elevenlabs_server.url, around.runner_server.url
        step(f"simulated ElevenLabs on {el_url}, simulated cursor-runner on {runner_url}")
        step(f"elevenlabs-agent listening on {wired.service.url}")
        # The browser's requests come through an authenticating proxy on this machine (BROWSER_AUTH=proxy).
        identity = {wired.settings.browser_auth_header: "demo-user"}
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=wired.service.url, timeout=10, headers=identity)
        )
        conversation_id, eleven_id = await _browser(http, around, stack, step)

        # The agent: call the code tool the way ElevenLabs does.
        answer = await http.post(
            "/agent-tools",
            json={
                "tool_name": "code_task",
                "conversation_id": eleven_id,
                "prompt": "Add a health check endpoint and its test",
            },
            headers={"X-Webhook-Secret": webhook_secret},
        )
        reply = answer.json()
        step(f"ElevenLabs tool call answered HTTP {answer.status_code}: {reply.get('message')!r}")
        if not reply.get("success"):
            return False
        task_id = reply["taskId"]

        await runner.wait_callbacks(1, timeout=30)
        status, body = runner.callbacks[0]
        step(f"cursor-runner POSTed its callback for task {task_id}: HTTP {status} {body}")
        updates = await around.elevenlabs.wait_update(eleven_id, timeout=30)
        step(f"ElevenLabs conversation received contextual_update: {updates[0]}")
        conversation = (await http.get(f"/agent-conversations/api/{conversation_id}")).json()
        tool_message = conversation["messages"][-1]
        step(f"conversation history: tool message status={tool_message['status']!r}")
        ok = bool(updates[0].get("context_id") == task_id and tool_message["status"] == "completed")
        step("SUCCESS: the result reached the live conversation" if ok else "FAILED: unexpected result")
        return ok


async def _browser(
    http: httpx.AsyncClient, around: Neighbours, stack: contextlib.AsyncExitStack, step: Callable[[str], None]
) -> tuple[str, str]:
    """What the browser does: create our conversation, open the ElevenLabs session, register it.
    Returns (our conversation id, ElevenLabs' conversation id); the voice socket stays open in `stack`."""
    conversation_id = (await http.post("/agent-conversations/api/new", json={"agentId": AGENT_ID})).json()[
        "conversationId"
    ]
    step(f"browser created conversation {conversation_id}")
    signed = (await http.get("/signed-url", params={"agentId": AGENT_ID})).json()
    step(f"browser got a signed URL (expires {signed['expiresAt']})")
    voice = await stack.enter_async_context(websockets.connect(signed["signedUrl"]))
    hello = orjson.loads(await voice.recv())
    eleven_id = hello["conversation_initiation_metadata_event"]["conversation_id"]
    step(f"browser opened ElevenLabs conversation {eleven_id}")
    registration = await http.post(
        f"/agent-conversations/api/{conversation_id}/session",
        json={
            "sessionUrl": signed["signedUrl"],
            "pushUrl": f"{around.elevenlabs_server.ws_url}/push/{eleven_id}",
            "transport": "websocket",
            "metadata": {"agentId": AGENT_ID, "elevenConversationId": eleven_id},
        },
    )
    step(f"browser registered its session: {registration.json()['message']}")
    return conversation_id, eleven_id
