"""Failure drills: one per failure mode of docs/runbook.md ("Failure modes").

Each drill induces the fault against the real service (in-process, loopback, real redis-server),
checks that the symptoms the runbook lists really appear (log `event` names, /metrics series,
/ready, /health, /config/health, CLI output), applies the runbook's resolution and checks that the
service is back with nothing lost. Times from fault to detection and to recovery are printed.

A runbook symptom that does not show up is recorded as a problem (quoting the runbook) and fails the
drill at its end, after the resolution has been exercised too, so one missing symptom does not hide
whether the rest of the procedure works.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from elevenlabs_agent import events, housekeeping
from elevenlabs_agent import logging as agent_logging
from elevenlabs_agent.redis.server import RedisServer, free_port
from elevenlabs_agent.sim.cursor_runner import callback_body, split_secret
from elevenlabs_agent.sim.elevenlabs import PushMode
from elevenlabs_agent.sim.server import LocalServer
from elevenlabs_agent.stores.tasks import STUCK_TASK_AGE
from elevenlabs_agent.timeutil import parse_iso
from tests.conftest import Stack, StackFactory
from tests.helpers import BROWSER_IDENTITY, run_cli_async

pytestmark = pytest.mark.slow

# --- helpers: logs, metrics, CLI, timing ------------------------------------------------------------


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Drills point the service's logging at a buffer of their own; afterwards point it back at stdout."""
    yield
    agent_logging.configure("info")


class Drill:
    """One drill's log capture, soft runbook checks and timings.

    The service's JSON log lines go to a buffer of the drill's own rather than to capsys: pytest 9
    closes capsys' stream at the end of the call phase, before the stack's shutdown has logged, and
    a failing log write there aborts the service's lifespan shutdown.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = io.StringIO()
        self._parsed_upto = 0
        self._records: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.fault_at: float | None = None
        self.timings: list[tuple[str, float]] = []

    async def stack(self, make_stack: StackFactory, **overrides: Any) -> Stack:
        """Start a stack whose logging (configured while it starts) writes into this drill's buffer."""
        with contextlib.redirect_stdout(self.buffer):
            return await make_stack(**overrides)

    # logs (structlog writes JSON lines to what was stdout when the stack configured it)
    def records(self) -> list[dict[str, Any]]:
        text = self.buffer.getvalue()
        end = text.rfind("\n") + 1
        for line in text[self._parsed_upto : end].splitlines():
            if not line.startswith("{"):
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(line)
                if isinstance(record, dict) and isinstance(record.get("event"), str):
                    self._records.append(record)
        self._parsed_upto = max(self._parsed_upto, end)
        return self._records

    def count(self) -> int:
        """How many log records so far: a cursor for `events(..., after=)`."""
        return len(self.records())

    def events(self, name: str, after: int = 0, **match: Any) -> list[dict[str, Any]]:
        return [
            r for r in self.records()[after:] if r["event"] == name and all(r.get(k) == v for k, v in match.items())
        ]

    async def wait_event(self, name: str, after: int = 0, timeout: float = 5.0, **match: Any) -> dict[str, Any] | None:
        """The first `name` record (after cursor `after`) matching `match`, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name, after, **match)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)

    async def expect_event(self, name: str, runbook: str, after: int = 0, timeout: float = 5.0, **match: Any) -> bool:
        record = await self.wait_event(name, after, timeout, **match)
        seen = sorted({r["event"] for r in self.records()[after:]})
        return self.check(record is not None, runbook, f"no {name} {match or ''} within {timeout} s; events: {seen}")

    # soft checks
    def check(self, ok: bool, runbook: str, observed: Any) -> bool:
        if not ok:
            self.problems.append(f"runbook says {runbook!r}; observed: {observed}")
        return ok

    # timing
    def fault(self, what: str) -> None:
        self.fault_at = time.monotonic()
        self.say(f"fault: {what}")

    def mark(self, label: str, at: float | None = None) -> float:
        assert self.fault_at is not None
        elapsed = (at if at is not None else time.monotonic()) - self.fault_at
        self.timings.append((label, elapsed))
        return elapsed

    def say(self, text: str) -> None:
        print(f"[{self.name}] {text}", flush=True)

    def finish(self) -> None:
        ordered = sorted(self.timings, key=lambda timing: timing[1])
        summary = "; ".join(f"{label} {seconds:.3f} s" for label, seconds in ordered)
        self.say(f"fault -> {summary}" if summary else "no timings")
        for problem in self.problems:
            self.say(f"RUNBOOK MISMATCH: {problem}")
        assert not self.problems, f"{len(self.problems)} runbook mismatch(es):\n" + "\n".join(self.problems)


@pytest.fixture
def drill(request: pytest.FixtureRequest) -> Drill:
    print(flush=True)
    return Drill(request.node.name.removeprefix("test_"))


class Metrics:
    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def get(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (0 if absent)."""
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and sample_labels == labels:
                return value
        return 0.0

    def total(self, name: str, where: Callable[[dict[str, str]], bool]) -> float:
        return sum(v for n, labels, v in self.samples if n == name and where(labels))


async def scrape(stack: Stack) -> Metrics:
    response = await stack.http.get("/metrics")
    assert response.status_code == 200, response.text
    return Metrics(response.text)


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.02) -> float | None:
    """Seconds until `check()` was true, or None if it never was within `timeout` (a bounded loop)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if await check():
            return time.monotonic() - began
        await asyncio.sleep(interval)
    return None


def speakable(body: Any) -> bool:
    message = body.get("message") if isinstance(body, dict) else None
    return isinstance(message, str) and len(message.strip()) > 10 and "{" not in message and "Traceback" not in message


def pending_key(conversation_id: str) -> str:
    return f"elevenlabs:pending:{{{conversation_id}}}"


def session_key(conversation_id: str) -> str:
    return f"elevenlabs:session:{conversation_id}"


def callback_of(stack: Stack, task_id: str) -> tuple[str, str]:
    """The callback URL (secret stripped) and the per-task secret cursor-runner received."""
    sent = next(r for r in stack.runner.received if r["id"] == task_id)
    url, secret = split_secret(sent["callbackUrl"])
    assert secret
    return url, secret


async def post_callback(
    stack: Stack, url: str, secret: str | None, body: dict[str, Any], header: str = "X-Cursor-Runner-Secret"
) -> httpx.Response:
    headers = {header: secret} if secret is not None else {}
    return await stack.http.post(url, json=body, headers=headers)


def context_ids(stack: Stack, eleven_id: str) -> list[str]:
    conversation = stack.elevenlabs.conversations.get(eleven_id)
    return [u["context_id"] for u in conversation.contextual_updates] if conversation else []


async def wait_delivered(stack: Stack, eleven_id: str, task_id: str, timeout: float = 10.0) -> float | None:
    """Seconds until `task_id`'s contextual_update reached the fake ElevenLabs conversation."""

    async def arrived() -> bool:
        return task_id in context_ids(stack, eleven_id)

    return await poll(arrived, timeout)


def iso_ago(seconds: float) -> str:
    stamp = datetime.now(UTC) - timedelta(seconds=seconds)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def count_keys(stack: Stack, pattern: str) -> int:
    return len([k async for k in stack.redis.scan_iter(match=pattern, count=1000)])


# --- 1. Redis unavailable ---------------------------------------------------------------------------


async def test_drill_1_redis_unavailable(
    drill: Drill, make_stack: StackFactory, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "PING_INTERVAL", 0.1)
    stack = await drill.stack(make_stack, housekeeping_interval_seconds=0.2)
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)

    # Before the fault: one result delivered, one task still waiting for its callback.
    task_done = await stack.start_task(eleven_id, "before the outage: delivered")
    assert await wait_delivered(stack, eleven_id, task_done) is not None

    async def recorded() -> bool:
        return (await stack.task(task_done)).get("delivery") == "delivered"

    assert await poll(recorded, 5) is not None
    stack.runner.callback_kind = "none"
    task_open = await stack.start_task(eleven_id, "before the outage: still running")
    open_url, open_secret = callback_of(stack, task_open)
    before_task_done = await stack.task(task_done)
    before_task_open = await stack.task(task_open)
    before_conversation = await stack.redis.hgetall(f"elevenlabs:conversation:{conversation_id}")
    assert before_task_open["status"] == "pending"
    m0 = await scrape(stack)
    assert m0.get("elevenlabs_agent_redis_up") == 1
    stream = SSEWatch(stack, conversation_id)
    await stream.opened()
    cursor = drill.count()

    try:
        drill.fault("redis-server stopped (SIGTERM)")
        stopping = asyncio.create_task(asyncio.to_thread(redis_server.stop))

        async def ready_503() -> bool:
            return (await stack.http.get("/ready")).status_code == 503

        detected = await poll(ready_503, 10)
        assert detected is not None, "/ready never turned 503 with Redis stopped"
        drill.mark("/ready 503")
        await stopping
        assert not redis_server.running

        async def gauge_down() -> bool:
            return (await scrape(stack)).get("elevenlabs_agent_redis_up") == 0

        if drill.check(await poll(gauge_down, 5) is not None, "elevenlabs_agent_redis_up 0", "stayed 1 for 5 s"):
            drill.mark("redis_up 0")

        ready = await stack.http.get("/ready")
        drill.check(ready.status_code == 503, "/ready 503", ready.status_code)
        drill.check(
            ready.headers["content-type"].startswith("application/health+json"),
            "/ready ... application/health+json",
            ready.headers["content-type"],
        )
        checks = ready.json()["checks"]
        drill.check(checks["redis:ping"][0]["status"] == "fail", '/ready 503 with "redis:ping" failing', ready.json())
        drill.check("observedValue" in checks["redis:ping"][0], "per-check status and Redis latency", checks)
        health = await stack.http.get("/health")
        drill.check(
            health.status_code == 200 and health.json().get("redis") == "disconnected",
            '/health 200 with "redis":"disconnected"',
            (health.status_code, health.text),
        )

        # Every webhook answers 503 at once, with a speakable message; callbacks are spooled (200).
        failed_requests = 0
        for what, send in (
            ("code tool webhook", lambda: stack.call_tool({"conversation_id": eleven_id, "prompt": "during"})),
            (
                "status tool webhook",
                lambda: stack.call_tool(
                    {"tool_name": "get_task_status", "conversation_id": eleven_id, "task_id": task_done}
                ),
            ),
        ):
            began = time.monotonic()
            response = await send()
            took = time.monotonic() - began
            failed_requests += response.status_code == 503
            body = response.json()
            drill.check(
                response.status_code == 503
                and body.get("success") is False
                and body.get("error") == "storage (Redis) is unavailable",
                'every webhook answers 503 {"success":false,"error":"storage (Redis) is unavailable","message":"…"}',
                f"{what}: {response.status_code} {response.text}",
            )
            drill.check(speakable(body), "the agent says the speakable `message`", f"{what}: {body}")
            drill.check(took < 2.0, "every webhook answers 503 ... at once", f"{what} took {took:.2f} s")
        drill.say(f"webhook with Redis down: HTTP 503 with message {body.get('message')!r}")

        callback = await post_callback(stack, open_url, open_secret, callback_body("completion", task_open))
        drill.check(
            callback.status_code == 200 and callback.json().get("status") == "accepted",
            'Callbacks answer 200 `{"success":true,"status":"accepted"}`',
            (callback.status_code, callback.text),
        )
        await drill.expect_event(
            events.CALLBACK_SPOOLED, "each is written to the ... callback spool (`callback.spooled`", cursor
        )
        spool = (await stack.http.get("/health")).json().get("callbackSpool") or {}
        drill.check(spool.get("records") == 1, '`"callbackSpool"` in `/health` growing', spool)
        code, out, err = await run_cli_async(
            "spool", "status", "--dir", stack.settings.callback_spool_dir or "", "--json"
        )
        drill.check(
            code == 0 and orjson.loads(out or "{}").get("records") == 1,
            "`elevenlabs-agent spool status` ... lists each slot, ... its records",
            (code, out, err),
        )

        await drill.expect_event(events.REDIS_UNAVAILABLE, "log events `redis.unavailable`", cursor)
        unavailable = [
            r for r in drill.events(events.REDIS_UNAVAILABLE, cursor) if r.get("path") in ("/agent-tools", "/callback")
        ]
        drill.check(
            len(unavailable) == failed_requests,
            "`redis.unavailable` (one per failed request)",
            f"{len(unavailable)} redis.unavailable lines for {failed_requests} failed requests "
            f"({[r.get('path') for r in unavailable]})",
        )
        # housekeeping.failed: the runbook lists it for this mode (and "Housekeeping stalled" relies on it).
        if await drill.expect_event(
            events.HOUSEKEEPING_FAILED, "log events `redis.unavailable` and `housekeeping.failed`", cursor, timeout=3
        ):
            drill.mark("housekeeping.failed")

        # "SSE streams stop": the stream opened before the fault ends.
        ended = await stream.ended(5)
        if drill.check(ended is not None, "SSE streams stop", f"still open; read {stream.lines[-3:]}"):
            drill.mark(f"open SSE stream ended ({stream.end})", at=ended)
        sse_path = f"/agent-conversations/api/{conversation_id}/events"
        drill.check(
            not drill.events(events.HTTP_UNHANDLED_ERROR, cursor),
            "symptoms: `redis.unavailable` (one per failed request); Log events: `http.unhandled_error` "
            "(a bug: report it with the `requestId`), i.e. not an expected symptom of a Redis outage",
            [
                (r.get("path"), r.get("exception", "").strip().splitlines()[-1:])
                for r in drill.events(events.HTTP_UNHANDLED_ERROR, cursor)
            ],
        )
        drill.check(
            bool(drill.events(events.REDIS_UNAVAILABLE, cursor, path=sse_path)),
            "`redis.unavailable` (one per failed request) for the SSE stream Redis cut off",
            "no redis.unavailable for the event stream",
        )

        m1 = await scrape(stack)
        drill.check(
            m1.get("elevenlabs_agent_http_requests_total", route="/callback", method="POST", status="503")
            - m0.get("elevenlabs_agent_http_requests_total", route="/callback", method="POST", status="503")
            == 0,
            "**no result is lost**: callbacks ... wait in the spool (no ElevenLabsAgentCallbackErrors)",
            "a /callback 503 counted",
        )
        drill.check(
            m1.get("elevenlabs_agent_callbacks_spooled_total") - m0.get("elevenlabs_agent_callbacks_spooled_total") == 1
            and m1.get("elevenlabs_agent_callback_spool_records") == 1,
            "`elevenlabs_agent_callbacks_spooled_total`, `elevenlabs_agent_callback_spool_records` ... growing",
            (m1.get("elevenlabs_agent_callbacks_spooled_total"), m1.get("elevenlabs_agent_callback_spool_records")),
        )

        code, out, err = await run_cli_async("health", "--url", stack.service.url)
        drill.check(
            code == 1 and out.startswith("unhealthy: ") and "redis=fail" in out,
            "`elevenlabs-agent health` ... `redis=fail` -> Redis unavailable; exits 1 otherwise",
            (code, out, err),
        )
        drill.say(f"health CLI during the outage: exit {code}: {out.strip()}")
        code, out, err = await run_cli_async("stats", "--redis-url", redis_server.url)
        drill.check(
            code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out,
            "Every command that touches Redis ... exits non-zero with one line on error",
            (code, out, err),
        )

        # Resolution: bring Redis back; do not restart the service.
        began = time.monotonic()
        drill.mark("redis-server started again")
        await asyncio.to_thread(redis_server.start)

        async def ready_200() -> bool:
            return (await stack.http.get("/ready")).status_code == 200

        back = await poll(ready_200, 10)
        assert back is not None, "/ready did not turn 200 after Redis came back"
        drill.mark("/ready 200 again (recovered)")
        # The spooled callback is recorded and delivered by itself.
        if await drill.expect_event(
            events.SPOOL_REPLAYED, "recorded ... (then `spool.replayed`", cursor, taskId=task_open
        ):
            drill.mark("spooled callback replayed")
        spooled_delivered = await wait_delivered(stack, eleven_id, task_open)
        if drill.check(spooled_delivered is not None, "recorded and delivered within a second or so", "not delivered"):
            drill.mark("spooled result delivered")
        drill.say(f"Redis started; /ready 200 {time.monotonic() - began:.3f} s after redis-server was started")
    finally:
        if not redis_server.running:
            await asyncio.to_thread(redis_server.start)

    await stack.redis.connection_pool.disconnect()  # the test's own client: drop connections to the old process
    drill.check(
        await poll(lambda: _gauge_is(stack, "elevenlabs_agent_redis_up", 1), 5) is not None,
        "The service reconnects by itself within seconds",
        "redis_up stayed 0",
    )
    health = await stack.http.get("/health")
    drill.check(health.json().get("redis") == "connected", "reconnects by itself", health.text)
    code, out, err = await run_cli_async("health", "--url", stack.service.url)
    drill.check(code == 0 and "redis=pass" in out, "Verify with `elevenlabs-agent health`", (code, out, err))
    code, out, err = await run_cli_async("stats", "--redis-url", redis_server.url, "--json")
    drill.check(code == 0, "Verify with ... `elevenlabs-agent stats`", (code, err))

    # A tool call and its callback work again; data written before the fault is still there.
    stack.runner.callback_kind = "completion"
    sent = len(stack.runner.callbacks)
    task_after = await stack.start_task(eleven_id, "after the outage")
    await stack.runner.wait_callbacks(sent + 1)
    assert stack.runner.callbacks[sent][0] == 200, stack.runner.callbacks
    assert await wait_delivered(stack, eleven_id, task_after) is not None
    drill.mark("tool call + callback delivered again")
    assert await stack.task(task_done) == before_task_done
    after_open = await stack.task(task_open)
    assert after_open["status"] == "completed" and after_open.get("recordedAt"), after_open
    conversation = await stack.redis.hgetall(f"elevenlabs:conversation:{conversation_id}")
    # Only the spooled task's pending tool message changed: its result replaced it.
    open_message = before_conversation[f"task:{task_open}"]
    assert orjson.loads(conversation[open_message])["status"] == "completed"
    assert all(
        conversation.get(k) == v for k, v in before_conversation.items() if k.startswith("msg:") and k != open_message
    ), "conversation messages written before the outage changed"
    assert sorted(context_ids(stack, eleven_id)) == sorted([task_done, task_open, task_after])
    code, out, err = await run_cli_async("spool", "status", "--dir", stack.settings.callback_spool_dir or "", "--json")
    drill.check(code == 0 and orjson.loads(out)["records"] == 0, "spool drained: `spool status`", (code, out))
    # The webhooks refused with 503 created nothing.
    assert await count_keys(stack, "cursor_task:*") == 3
    drill.say(
        f"after recovery: task {task_open[:8]} completed and delivered (its callback arrived during the "
        "outage, was spooled and replayed: nothing lost, as the runbook's Impact says)"
    )
    await voice.close()
    drill.finish()


async def _gauge_is(stack: Stack, name: str, value: float) -> bool:
    return (await scrape(stack)).get(name) == value


class SSEWatch:
    """An open SSE subscription read in the background, as a browser holds it."""

    def __init__(self, stack: Stack, conversation_id: str) -> None:
        self.stack = stack
        self.url = f"/agent-conversations/api/{conversation_id}/events"
        self.lines: list[str] = []
        self.end: str | None = None
        self.ended_at: float | None = None
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        timeout = httpx.Timeout(5, read=30)
        try:
            async with (
                httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=self.stack.service.url, timeout=timeout) as client,
                client.stream("GET", self.url) as response,
            ):
                async for line in response.aiter_lines():
                    self.lines.append(line)
            self.end = "closed by the server"
        except httpx.HTTPError as exc:
            self.end = f"{type(exc).__name__}: {exc}"
        self.ended_at = time.monotonic()

    async def opened(self) -> None:
        async with asyncio.timeout(5):
            while ": keep-alive" not in self.lines:
                await asyncio.sleep(0.02)

    async def ended(self, timeout: float) -> float | None:
        """When the stream ended (monotonic), or None if it is still open after `timeout`."""
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            return None
        return self.ended_at


# --- 2. cursor-runner unreachable or slow -------------------------------------------------------------


async def expect_dispatch_failure(
    drill: Drill, stack: Stack, eleven_id: str, reason: str, bound: float
) -> tuple[str, float]:
    """One tool call while cursor-runner is broken: every symptom of the runbook for `reason`."""
    cursor = drill.count()
    m0 = await scrape(stack)
    began = time.monotonic()
    response = await stack.call_tool({"conversation_id": eleven_id, "prompt": f"while cursor-runner is {reason}"})
    took = time.monotonic() - began
    drill.mark(f"webhook answered success:false ({reason})")
    assert response.status_code == 200, response.text
    body = response.json()
    task_id: str = body["taskId"]
    drill.check(
        body.get("success") is False and body.get("status") == "failed",
        "The agent tells the user it could not start the task",
        body,
    )
    drill.check(speakable(body), "The agent tells the user it could not start the task (speakable)", body)
    drill.check(took < bound, f"webhook answered within {bound} s", f"{took:.2f} s")
    await drill.expect_event(
        events.DISPATCH_FAILED, f"log event `dispatch.failed` with `reason` = `{reason}`", cursor, reason=reason
    )
    m1 = await scrape(stack)
    for name, labels, runbook in (
        ("elevenlabs_agent_dispatches_total", {"outcome": reason}, 'dispatches_total{outcome!="accepted"} rising'),
        (
            "elevenlabs_agent_webhooks_total",
            {"outcome": "dispatch_failed"},
            'elevenlabs_agent_webhooks_total{outcome="dispatch_failed"}',
        ),
    ):
        delta = m1.get(name, **labels) - m0.get(name, **labels)
        drill.check(delta == 1, runbook, f"{name}{labels} +{delta}")

    def not_accepted(labels: dict[str, str]) -> bool:
        return labels.get("outcome") != "accepted"

    drill.check(
        m1.total("elevenlabs_agent_dispatches_total", not_accepted)
        > m0.total("elevenlabs_agent_dispatches_total", not_accepted),
        'elevenlabs_agent_dispatches_total{outcome!="accepted"} rising',
        "not rising",
    )
    task = await stack.task(task_id)
    drill.check(
        task.get("status") == "failed" and task.get("error") == f"dispatch failed: {reason}",
        f"the task is `failed` with `error: dispatch failed: {reason}`",
        {k: task.get(k) for k in ("status", "error")},
    )
    status = await stack.call_tool({"tool_name": "get_task_status", "conversation_id": eleven_id, "task_id": task_id})
    drill.check(status.json().get("status") == "failed", "get_task_status reports the task failed", status.text)
    drill.say(f"{reason}: webhook answered success:false in {took:.3f} s: {body.get('message')!r}")
    return task_id, took


async def config_health(stack: Stack) -> dict[str, Any]:
    began = time.monotonic()
    response = await stack.http.get("/config/health")
    took = time.monotonic() - began
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    body["_tookSeconds"] = round(took, 3)
    return body


async def expect_task_runs(
    drill: Drill, stack: Stack, eleven_id: str, label: str, delivery: Stack | None = None
) -> str:
    """After the fix: the next tool call starts a task and its result reaches the live conversation."""
    sent = len(stack.runner.callbacks)
    response = await stack.call_tool({"conversation_id": eleven_id, "prompt": f"after the fix ({label})"})
    assert response.status_code == 200 and response.json()["success"] is True, response.text
    task_id: str = response.json()["taskId"]
    await stack.runner.wait_callbacks(sent + 1)
    assert stack.runner.callbacks[sent][0] == 200, stack.runner.callbacks
    assert await wait_delivered(delivery or stack, eleven_id, task_id) is not None
    drill.mark(f"{label}: next task started and delivered")
    return task_id


async def test_drill_2a_cursor_runner_refuses_connections(drill: Drill, make_stack: StackFactory) -> None:
    port = free_port()  # nothing listens here: connection refused
    stack = await drill.stack(make_stack, cursor_runner_url=f"http://127.0.0.1:{port}")
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)

    drill.fault(f"cursor-runner not listening (CURSOR_RUNNER_URL port {port} refuses)")
    await expect_dispatch_failure(drill, stack, eleven_id, "unreachable", bound=2.0)
    health = await config_health(stack)
    drill.check(
        health["dependencies"]["cursorRunner"] == "disconnected" and health["status"] == "degraded",
        '`/config/health` shows `"cursorRunner":"disconnected"`',
        health,
    )
    drill.check(health["_tookSeconds"] < 3, "/config/health: checking both dependencies (bounded time)", health)
    drill.say(f"/config/health: {health['status']} cursorRunner={health['dependencies']['cursorRunner']}")

    # Resolution: cursor-runner is back on its address (the same fake, now listening there).
    async with LocalServer(stack.runner.app(), port=port):
        drill.mark("cursor-runner listening again")
        health = await config_health(stack)
        assert health["dependencies"]["cursorRunner"] == "connected", health
        await expect_task_runs(drill, stack, eleven_id, "unreachable")
    assert await stack.redis.exists(session_key(conversation_id))
    await voice.close()
    drill.finish()


async def test_drill_2b_cursor_runner_hangs(drill: Drill, make_stack: StackFactory) -> None:
    timeout = 0.5
    stack = await drill.stack(make_stack, dispatch_timeout_seconds=timeout)
    _, eleven_id, voice = await stack.live_conversation(push=True)

    stack.runner.answer_delay = 2.0  # accepts the connection, answers after the dispatch timeout
    drill.fault(f"cursor-runner answers after 2.0 s (DISPATCH_TIMEOUT_SECONDS={timeout})")
    task_id, took = await expect_dispatch_failure(drill, stack, eleven_id, "timeout", bound=timeout + 1.5)
    drill.check(took >= timeout * 0.9, "no answer within DISPATCH_TIMEOUT_SECONDS", f"answered after {took:.2f} s")
    health = await config_health(stack)
    drill.say(
        f"/config/health while only the dispatch endpoint is slow: {health['status']} "
        f"cursorRunner={health['dependencies']['cursorRunner']} (its /health still answers; see 2e for a full hang)"
    )

    # cursor-runner did get the task and calls back later: "A callback that arrives for a task whose
    # dispatch timed out is still accepted and delivered."
    await stack.runner.wait_callbacks(1, timeout=10)
    status, answer = stack.runner.callbacks[0]
    drill.check(
        status == 200 and answer.get("status") == "completed",
        "A callback that arrives for a task whose dispatch timed out is still accepted",
        (status, answer),
    )
    drill.check(
        await wait_delivered(stack, eleven_id, task_id) is not None,
        "... is still accepted and delivered",
        context_ids(stack, eleven_id),
    )
    drill.check((await stack.task(task_id)).get("status") == "completed", "still accepted", await stack.task(task_id))

    # Resolution: cursor-runner answers in time again.
    stack.runner.answer_delay = 0.0
    drill.mark("cursor-runner answers promptly again")
    await expect_task_runs(drill, stack, eleven_id, "timeout")
    await voice.close()
    drill.finish()


async def test_drill_2c_cursor_runner_rejects_our_secret(drill: Drill, make_stack: StackFactory) -> None:
    stack = await drill.stack(make_stack)
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)

    rotated = "crsec-rotated-" + secrets.token_urlsafe(16)
    stack.runner.secret = rotated  # cursor-runner's WEBHOOK_SECRET changed; ours did not
    drill.fault("cursor-runner's WEBHOOK_SECRET rotated (we send the old CURSOR_RUNNER_SECRET)")
    await expect_dispatch_failure(drill, stack, eleven_id, "unauthorized", bound=2.0)
    health = await config_health(stack)
    drill.check(
        health["dependencies"]["cursorRunner"] == "connected",
        "(cursor-runner's own GET /health answers 2xx: `connected` there, whatever dispatches get)",
        health,
    )
    drill.say(f"/config/health with a wrong CURSOR_RUNNER_SECRET: {health['status']} {health['dependencies']}")

    # Resolution (runbook): set CURSOR_RUNNER_SECRET to cursor-runner's WEBHOOK_SECRET and restart.
    await stack.service.stop()
    fixed = await drill.stack(
        make_stack, cursor_runner_url=stack.settings.cursor_runner_url, cursor_runner_secret=SecretStr(rotated)
    )
    fixed.runner = stack.runner  # the same cursor-runner; only this instance was restarted
    ready = await fixed.http.get("/ready")
    assert ready.status_code == 200, ready.text
    drill.mark("restarted with the corrected secret")
    # The live session and its alias are in Redis: the restarted instance serves the same conversation;
    # the result goes to the push bridge the session registered (the first stack's fake ElevenLabs).
    assert await fixed.redis.exists(session_key(conversation_id))
    await expect_task_runs(drill, fixed, eleven_id, "unauthorized", delivery=stack)
    await voice.close()
    drill.finish()


async def test_drill_2d_cursor_runner_answers_5xx(drill: Drill, make_stack: StackFactory) -> None:
    stack = await drill.stack(make_stack)
    _, eleven_id, voice = await stack.live_conversation(push=True)

    stack.runner.answer_status = 500
    drill.fault("cursor-runner answers HTTP 500 to every dispatch")
    await expect_dispatch_failure(drill, stack, eleven_id, "rejected", bound=2.0)
    health = await config_health(stack)
    drill.check(
        health["dependencies"]["cursorRunner"] == "connected",
        "(cursor-runner's own GET /health answers 2xx: `connected` there, whatever dispatches get)",
        health,
    )
    drill.say(f"/config/health while cursor-runner answers 500: {health['status']} {health['dependencies']}")

    stack.runner.answer_status = 200
    drill.mark("cursor-runner answers 200 again")
    await expect_task_runs(drill, stack, eleven_id, "rejected")
    await voice.close()
    drill.finish()


async def test_drill_2e_cursor_runner_black_hole(drill: Drill, make_stack: StackFactory) -> None:
    """cursor-runner's host accepts TCP connections and never answers anything (a hung process, a
    half-dead load balancer): dispatches time out and /config/health must say so in bounded time."""
    timeout = 0.5
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    stack = await drill.stack(
        make_stack, cursor_runner_url=f"http://127.0.0.1:{port}", dispatch_timeout_seconds=timeout
    )
    _, eleven_id, voice = await stack.live_conversation(push=True)
    try:
        drill.fault(f"cursor-runner accepts connections and never answers (DISPATCH_TIMEOUT_SECONDS={timeout})")
        await expect_dispatch_failure(drill, stack, eleven_id, "timeout", bound=timeout + 1.5)
        health = await config_health(stack)
        drill.check(
            health["dependencies"]["cursorRunner"] == "disconnected" and health["status"] == "degraded",
            '`/config/health` shows `"cursorRunner":"disconnected"` when it refuses or hangs',
            health,
        )
        drill.check(health["_tookSeconds"] < timeout + 1.5, "/config/health ... (bounded time)", health)
        drill.say(f"/config/health against the black hole: {health['status']} {health['dependencies']['cursorRunner']}")
    finally:
        hole.close()
        for writer in connections:
            writer.close()
        await hole.wait_closed()

    # Resolution: a working cursor-runner on that address again.
    async with LocalServer(stack.runner.app(), port=port):
        drill.mark("cursor-runner answering on its address again")

        async def reachable() -> bool:
            return (await config_health(stack))["dependencies"]["cursorRunner"] == "connected"

        assert await poll(reachable, 5) is not None
        await expect_task_runs(drill, stack, eleven_id, "black hole")
    await voice.close()
    drill.finish()


# --- 3. Expired sessions --------------------------------------------------------------------------------


async def test_drill_3_expired_session(
    drill: Drill, make_stack: StackFactory, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "PING_INTERVAL", 0.1)
    stack = await drill.stack(make_stack, session_ttl_seconds=1, housekeeping_interval_seconds=0.2)
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    stack.runner.callback_kind = "none"  # the callback is sent below, once the session has expired
    task_id = await stack.start_task(eleven_id, "finish after the browser went away")
    url, secret = callback_of(stack, task_id)

    async def session_gone() -> bool:
        return not await stack.redis.exists(session_key(conversation_id))

    assert await poll(session_gone, 5) is not None, "the session did not expire"
    drill.fault("session registration expired (SESSION_TTL 1 s) before cursor-runner's callback")
    cursor = drill.count()
    m0 = await scrape(stack)
    response = await post_callback(stack, url, secret, callback_body("completion", task_id, "done"))
    assert response.status_code == 200 and response.json()["status"] == "completed", response.text

    if await drill.expect_event(events.SESSION_MISSING, "log event `delivery.no_session`", cursor, taskId=task_id):
        drill.mark("delivery.no_session")

    async def counted() -> bool:
        m = await scrape(stack)
        return m.get("elevenlabs_agent_deliveries_total", channel="none", outcome="waiting") > m0.get(
            "elevenlabs_agent_deliveries_total", channel="none", outcome="waiting"
        )

    if drill.check(
        await poll(counted, 5) is not None,
        'elevenlabs_agent_deliveries_total{channel="none",outcome="waiting"}',
        "not incremented",
    ):
        drill.mark("deliveries_total{none,waiting} +1")

    async def waiting() -> bool:
        return (await scrape(stack)).get("elevenlabs_agent_results_waiting") > 0

    if drill.check(await poll(waiting, 5) is not None, "`elevenlabs_agent_results_waiting` > 0", "stayed 0"):
        drill.mark("results_waiting > 0")
    drill.check(
        await stack.redis.hexists(pending_key(conversation_id), task_id),
        "the result is in `elevenlabs:pending:{<conversationId>}`",
        await stack.redis.hgetall(pending_key(conversation_id)),
    )
    drill.check(context_ids(stack, eleven_id) == [], "a result arrives when the conversation has no live session", "")

    code, out, err = await run_cli_async("stats", "--redis-url", redis_server.url, "--json")
    assert code == 0, err
    families = {f["family"]: f for f in orjson.loads(out)}
    drill.check(
        families["pending_results"].get("resultsWaiting", 0) >= 1,
        "`stats` shows ... how many results wait for delivery",
        families["pending_results"],
    )
    drill.say(f"stats --json pending_results: {families['pending_results']}")
    code, out, err = await run_cli_async("sessions", "list", "--redis-url", redis_server.url, "--json")
    assert code == 0, err
    drill.check(
        all(row.get("conversationId") != conversation_id for row in orjson.loads(out)),
        "`elevenlabs-agent sessions list` (diagnosis: the session is gone)",
        out,
    )

    # Impact: none lost: in the conversation history and answerable by get_task_status.
    status = await stack.call_tool({"tool_name": "get_task_status", "conversation_id": eleven_id, "task_id": task_id})
    body = status.json()
    drill.check(
        status.status_code == 200 and body.get("status") == "completed" and "finished successfully" in body["message"],
        "answerable by the agent's `get_task_status` tool",
        status.text,
    )
    latest = await stack.call_tool({"tool_name": "get_task_status", "conversation_id": eleven_id})
    drill.check(
        latest.json()["tasks"][0]["taskId"] == task_id and latest.json()["tasks"][0]["status"] == "completed",
        "the result is in the conversation history",
        latest.text,
    )
    drill.say(f"get_task_status while undelivered: {body.get('message')!r}")

    # Resolution: the browser registers again for the conversation.
    cursor = drill.count()
    began = time.monotonic()
    registered = await stack.register(conversation_id, eleven_id)
    assert registered.status_code == 200, registered.text
    drill.check(registered.json()["pendingResults"] == 1, "delivered when a session registers again", registered.text)
    delivered = await wait_delivered(stack, eleven_id, task_id)
    assert delivered is not None, "the waiting result was not delivered to the new registration"
    drill.mark("re-registered -> result delivered (recovered)")
    drill.say(f"result reached the conversation {time.monotonic() - began:.3f} s after the new registration")
    await drill.expect_event(events.SESSION_REGISTERED, "`session.registered` events", cursor, pendingResults=1)
    await drill.expect_event(events.DELIVERY_REPLAYED, "`delivery.replayed` on a later registration", cursor)

    async def confirmed() -> bool:
        return (await stack.task(task_id)).get("delivery") == "delivered"

    assert await poll(confirmed, 5) is not None
    assert not await stack.redis.exists(pending_key(conversation_id))

    async def drained() -> bool:
        return (await scrape(stack)).get("elevenlabs_agent_results_waiting") == 0

    drill.check(await poll(drained, 5) is not None, "results_waiting back to 0", "stayed > 0")
    assert context_ids(stack, eleven_id) == [task_id]
    await voice.close()
    drill.finish()


# --- 4. Webhook failures ----------------------------------------------------------------------------------


async def test_drill_4_webhook_failures(drill: Drill, make_stack: StackFactory) -> None:
    stack = await drill.stack(make_stack)
    conversation_id = await stack.create_conversation()
    good = {"conversation_id": conversation_id, "prompt": "add a changelog entry"}
    m0 = await scrape(stack)
    cursor = drill.count()

    drill.fault("tool webhooks with a forged/missing secret, bad bodies")
    refused: list[tuple[str, int, httpx.Response]] = []

    async def send(what: str, expected: int, **kwargs: Any) -> httpx.Response:
        response = await stack.http.post("/agent-tools", **kwargs)
        refused.append((what, expected, response))
        return response

    await send("missing secret", 401, json=good)
    first = await drill.wait_event(events.WEBHOOK_UNAUTHORIZED, cursor, timeout=2)
    if first is not None:
        drill.mark("webhook.unauthorized logged")
    await send("forged X-Webhook-Secret", 401, json=good, headers={"X-Webhook-Secret": "whsec-forged"})
    await send("forged Bearer token", 401, json=good, headers={"Authorization": "Bearer whsec-forged"})
    await send(
        "malformed JSON",
        400,
        content=b'{"conversation_id": ',
        headers={**stack.auth, "Content-Type": "application/json"},
    )
    await send(
        "wrong content type", 415, content=orjson.dumps(good), headers={**stack.auth, "Content-Type": "text/plain"}
    )
    oversized = orjson.dumps({**good, "prompt": "x" * (stack.settings.max_body_bytes + 1)})
    await send("oversized body", 413, content=oversized, headers={**stack.auth, "Content-Type": "application/json"})
    await send("no conversation_id", 400, json={"prompt": "x"}, headers=stack.auth)
    await send("no prompt", 400, json={"conversation_id": conversation_id}, headers=stack.auth)

    for what, expected, response in refused:
        drill.check(
            response.status_code == expected and response.json().get("success") is False,
            f"{expected} for {what}",
            (response.status_code, response.text[:200]),
        )
    unauthorized = drill.events(events.WEBHOOK_UNAUTHORIZED, cursor)
    drill.check(
        sorted(r.get("reason") for r in unauthorized) == ["missing secret", "wrong secret", "wrong secret"],
        "`webhook.unauthorized` (401: missing/wrong `X-Webhook-Secret` or Bearer token)",
        [r.get("reason") for r in unauthorized],
    )
    bad = drill.events(events.HTTP_BAD_REQUEST, cursor, path="/agent-tools")
    drill.check(
        sorted(r.get("status") for r in bad) == [400, 400, 400, 413, 415],
        "`http.bad_request` (400/413/415: body shape, size, content type)",
        [(r.get("status"), r.get("error")) for r in bad],
    )
    if bad:
        drill.mark("http.bad_request logged")
    m1 = await scrape(stack)

    def delta(name: str, **labels: str) -> float:
        return m1.get(name, **labels) - m0.get(name, **labels)

    drill.check(
        delta("elevenlabs_agent_webhooks_total", outcome="unauthorized") == 3,
        'elevenlabs_agent_webhooks_total{outcome="unauthorized"}',
        delta("elevenlabs_agent_webhooks_total", outcome="unauthorized"),
    )
    by_status = {
        status: delta("elevenlabs_agent_http_requests_total", route="/agent-tools", method="POST", status=status)
        for status in ("401", "400", "413", "415")
    }
    drill.check(
        by_status == {"401": 3, "400": 3, "413": 1, "415": 1},
        'elevenlabs_agent_http_requests_total{route="/agent-tools",status=…}',
        by_status,
    )
    other_outcomes = {
        labels["outcome"]: value - m0.get("elevenlabs_agent_webhooks_total", **labels)
        for name, labels, value in m1.samples
        if name == "elevenlabs_agent_webhooks_total"
    }
    drill.say(f"webhooks_total deltas after the refused calls: {other_outcomes}; http_requests_total: {by_status}")

    # Impact: no task is created for a refused call.
    assert await count_keys(stack, "cursor_task:*") == 0
    assert stack.runner.received == []
    drill.say(f"refused calls left {await stack.redis.dbsize()} keys (the conversation created before) and no task")

    # WEBHOOK_SECRET unset: 503 webhook.not_configured.
    unconfigured = await drill.stack(make_stack, webhook_secret=None)
    cursor = drill.count()
    n0 = await scrape(unconfigured)
    response = await unconfigured.call_tool(good, headers={"X-Webhook-Secret": stack.webhook_secret})
    drill.check(
        response.status_code == 503 and response.json().get("success") is False,
        "`webhook.not_configured` (503: `WEBHOOK_SECRET` unset)",
        (response.status_code, response.text),
    )
    await drill.expect_event(events.WEBHOOK_NOT_CONFIGURED, "`webhook.not_configured`", cursor)
    n1 = await scrape(unconfigured)
    drill.check(
        n1.get("elevenlabs_agent_webhooks_total", outcome="not_configured")
        - n0.get("elevenlabs_agent_webhooks_total", outcome="not_configured")
        == 1,
        "elevenlabs_agent_webhooks_total{outcome=…} (Monitoring: watch for ... `not_configured`)",
        "not incremented",
    )
    config = (await unconfigured.http.get("/config")).json()["config"]
    drill.check(config["webhookSecretConfigured"] is False, "Diagnosis: `curl /config`", config)
    drill.say(f"WEBHOOK_SECRET unset: HTTP {response.status_code} {response.text}")
    assert await count_keys(stack, "cursor_task:*") == 0

    # Resolution: the secret ElevenLabs sends equals WEBHOOK_SECRET -> accepted.
    response = await stack.call_tool(good)
    assert response.status_code == 200 and response.json()["success"] is True, response.text
    drill.mark("correct secret accepted (recovered)")
    assert await count_keys(stack, "cursor_task:*") == 1

    # Late webhook: cursor-runner is slow to accept; the access log shows the long durationMs.
    delay = 1.0
    stack.runner.answer_delay = delay
    cursor = drill.count()
    h0 = await scrape(stack)
    response = await stack.call_tool(good)
    assert response.status_code == 200 and response.json()["success"] is True, response.text
    line = await drill.wait_event(events.HTTP_REQUEST, cursor, route="/agent-tools", status=200)
    drill.check(
        line is not None and line.get("durationMs", 0) >= delay * 1000,
        "Late webhooks ... show as long `durationMs` in `http.request` lines",
        line,
    )
    h1 = await scrape(stack)
    slow = h1.get("elevenlabs_agent_http_request_duration_seconds_sum", route="/agent-tools") - h0.get(
        "elevenlabs_agent_http_request_duration_seconds_sum", route="/agent-tools"
    )
    drill.check(slow >= delay, "`/agent-tools` p99 ... (http_request_duration_seconds{route})", slow)
    drill.say(f"late webhook: http.request durationMs={line and line.get('durationMs')}")
    drill.finish()


# --- 5. Callback failures --------------------------------------------------------------------------------


async def test_drill_5_callback_failures(
    drill: Drill, make_stack: StackFactory, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "PING_INTERVAL", 0.1)
    stack = await drill.stack(make_stack, housekeeping_interval_seconds=0.2)
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    stack.runner.callback_kind = "none"  # this drill plays cursor-runner's callbacks itself
    task_id = await stack.start_task(eleven_id, "the task whose callback gets forged")
    expired_id = await stack.start_task(eleven_id, "the task that expires before its callback")
    url, secret = callback_of(stack, task_id)
    expired_url, expired_secret = callback_of(stack, expired_id)
    body = callback_body("completion", task_id, "genuine")
    m0 = await scrape(stack)
    cursor = drill.count()

    drill.fault("callbacks with a forged / missing per-task secret")
    forged = await post_callback(stack, url, "forged-" + secrets.token_urlsafe(8), body)
    if await drill.wait_event(events.CALLBACK_UNAUTHORIZED, cursor, timeout=2):
        drill.mark("callback.unauthorized logged")
    missing = await post_callback(stack, url, None, body)
    shared = await post_callback(stack, url, stack.webhook_secret, body, header="X-Webhook-Secret")
    for what, response in (("forged", forged), ("missing", missing), ("shared WEBHOOK_SECRET", shared)):
        drill.check(response.status_code == 401, f"`callback.unauthorized` (401) for a {what} secret", response.text)
    reasons = sorted(r.get("reason") for r in drill.events(events.CALLBACK_UNAUTHORIZED, cursor, taskId=task_id))
    drill.check(
        reasons == ["missing secret", "wrong secret", "wrong secret"],
        "`callback.unauthorized` (401: the per-task secret ... is missing or wrong)",
        reasons,
    )
    m1 = await scrape(stack)
    drill.check(
        m1.get("elevenlabs_agent_callbacks_total", outcome="unauthorized")
        - m0.get("elevenlabs_agent_callbacks_total", outcome="unauthorized")
        == 3,
        "elevenlabs_agent_callbacks_total{outcome=…} (unauthorized)",
        "not +3",
    )
    drill.check(
        m1.get("elevenlabs_agent_http_requests_total", route="/callback", method="POST", status="401")
        - m0.get("elevenlabs_agent_http_requests_total", route="/callback", method="POST", status="401")
        == 3,
        "callback 401s counted per route",
        "not +3",
    )
    task = await stack.task(task_id)
    drill.check(task["status"] == "pending", "Tasks then stay `pending`", task)
    code, out, err = await run_cli_async(
        "tasks", "list", "--status", "pending", "--redis-url", redis_server.url, "--json"
    )
    assert code == 0, err
    listed = {row["taskId"] for row in orjson.loads(out)}
    drill.check(task_id in listed, "`elevenlabs-agent tasks list --status pending` finds them", listed)
    code, out, _ = await run_cli_async("tasks", "list", "--status", "pending", "--redis-url", redis_server.url)
    drill.check(code == 0 and task_id in out, "`tasks list --status pending` (table) shows the task", out)
    drill.say(f"tasks list --status pending: {sorted(listed)}")

    # "Tasks then stay `pending` and count as stuck after an hour": a task whose callback was lost
    # long ago (its creation backdated by 2 h, standing in for the wait) is what the diagnosis finds.
    lost_id = await stack.start_task(eleven_id, "the task whose callback cursor-runner lost")
    await stack.redis.hset(f"cursor_task:{lost_id}", "createdAt", iso_ago(2 * 3600))
    ttl = await stack.redis.ttl(f"cursor_task:{lost_id}")
    drill.check(
        2 * 3600 + ttl > STUCK_TASK_AGE + 3600,
        "Tasks then stay `pending` and count as stuck after an hour (they expire at 24 h)",
        f"TTL {ttl} s left at age 2 h",
    )
    code, out, err = await run_cli_async(
        "tasks", "list", "--status", "pending", "--older-than", "30m", "--redis-url", redis_server.url, "--json"
    )
    assert code == 0, err
    old = {row["taskId"] for row in orjson.loads(out)}
    drill.check(old == {lost_id}, "`elevenlabs-agent tasks list --status pending --older-than 30m`", old)
    code, out, err = await run_cli_async("stats", "--redis-url", redis_server.url, "--json")
    stuck = {f["family"]: f for f in orjson.loads(out)}["tasks"]
    drill.check(
        stuck.get("stuckPending") == 1, "`stats` shows ... how many are stuck (pending for more than 1 h)", stuck
    )

    async def stuck_gauge() -> bool:
        return (await scrape(stack)).get("elevenlabs_agent_stuck_pending_tasks") == 1

    drill.check(
        await poll(stuck_gauge, 5) is not None,
        "tasks pending for more than an hour (`elevenlabs_agent_stuck_pending_tasks`)",
        (await scrape(stack)).get("elevenlabs_agent_stuck_pending_tasks"),
    )
    drill.say(
        f"lost callback: task {lost_id[:8]} listed by --older-than 30m; stats stuckPending={stuck['stuckPending']}"
    )

    # Malformed callbacks: 400, nothing recorded.
    cursor = drill.count()
    headers = {"X-Cursor-Runner-Secret": secret, "Content-Type": "application/json"}
    malformed = await stack.http.post(url, content=b'{"requestId": ', headers=headers)
    no_success = await stack.http.post(url, json={"requestId": task_id, "output": "x"}, headers=headers)
    for response in (malformed, no_success):
        drill.check(response.status_code == 400, "`http.bad_request` (400)", response.text)
    bad = drill.events(events.HTTP_BAD_REQUEST, cursor, path="/callback")
    drill.check(len(bad) == 2, "`http.bad_request` (400)", [r.get("error") for r in bad])
    assert (await stack.task(task_id))["status"] == "pending"

    # A late callback for a task that expired (TTL 24 h) or was purged: 200 with a note.
    await stack.redis.delete(f"cursor_task:{expired_id}")
    cursor = drill.count()
    late = await post_callback(stack, expired_url, expired_secret, callback_body("completion", expired_id))
    drill.check(
        late.status_code == 200 and "note" in late.json(),
        "`callback.unknown_task` (200: the task expired after 24 h or was purged)",
        late.text,
    )
    await drill.expect_event(events.CALLBACK_UNKNOWN_TASK, "`callback.unknown_task`", cursor, taskId=expired_id)
    drill.say(f"late callback for an expired task: HTTP {late.status_code} {late.text}")

    # Resolution: cursor-runner sends the callback URL's secret back (X-Cursor-Runner-Secret).
    began = time.monotonic()
    cursor = drill.count()
    drill.mark("genuine callback sent")
    genuine = await post_callback(stack, url, secret, body)
    assert genuine.status_code == 200 and genuine.json()["status"] == "completed", genuine.text
    await drill.expect_event(events.CALLBACK_ACCEPTED, "`callback.accepted`", cursor, taskId=task_id)
    assert await wait_delivered(stack, eleven_id, task_id) is not None
    drill.mark("genuine callback accepted and delivered (recovered)")
    drill.say(f"genuine callback -> contextual_update in {time.monotonic() - began:.3f} s")

    # A repeat of it is a harmless duplicate.
    cursor = drill.count()
    duplicate = await post_callback(stack, url, secret, body, header="X-Webhook-Secret")
    drill.check(
        duplicate.status_code == 200 and duplicate.json().get("duplicate") is True,
        "`callback.duplicate` (200, harmless)",
        duplicate.text,
    )
    await drill.expect_event(events.CALLBACK_DUPLICATE, "`callback.duplicate`", cursor, taskId=task_id)
    m2 = await scrape(stack)
    for outcome, expected in (("accepted", 1), ("duplicate", 1), ("unknown_task", 1), ("unauthorized", 3)):
        got = m2.get("elevenlabs_agent_callbacks_total", outcome=outcome) - m0.get(
            "elevenlabs_agent_callbacks_total", outcome=outcome
        )
        drill.check(got == expected, f'elevenlabs_agent_callbacks_total{{outcome="{outcome}"}} +{expected}', got)

    async def confirmed() -> bool:
        return (await stack.task(task_id)).get("delivery") == "delivered"

    assert await poll(confirmed, 5) is not None
    await stack.deliveries_settled()
    assert context_ids(stack, eleven_id) == [task_id], "not delivered exactly once"
    code, out, err = await run_cli_async(
        "tasks", "list", "--status", "pending", "--redis-url", redis_server.url, "--json"
    )
    assert code == 0 and task_id not in {row["taskId"] for row in orjson.loads(out)}, out
    history = (await stack.http.get(f"/agent-conversations/api/{conversation_id}")).json()["messages"]
    assert [m["status"] for m in history if m.get("taskId") == task_id] == ["completed"], history

    # The runbook's alternative: CALLBACK_ACCEPT_WEBHOOK_SECRET=true with cursor-runner's shared secret.
    shared_stack = await drill.stack(make_stack, callback_accept_webhook_secret=True)
    shared_stack.runner.callback_kind = "none"
    other = await shared_stack.create_conversation()
    response = await shared_stack.call_tool({"conversation_id": other, "prompt": "shared secret callback"})
    shared_task = response.json()["taskId"]
    shared_url, _ = callback_of(shared_stack, shared_task)
    response = await post_callback(
        shared_stack,
        shared_url,
        shared_stack.webhook_secret,
        callback_body("completion", shared_task),
        header="X-Webhook-Secret",
    )
    drill.check(
        response.status_code == 200 and response.json().get("status") == "completed",
        "set `CALLBACK_ACCEPT_WEBHOOK_SECRET=true` with that secret as `WEBHOOK_SECRET`",
        response.text,
    )

    # The spool cannot take a callback while Redis is unreachable (here: full at once): 503, logged.
    full_stack = await drill.stack(make_stack, redis_url="redis://127.0.0.1:1", callback_spool_max_bytes=1)
    cursor = drill.count()
    response = await post_callback(full_stack, "/callback", "some-secret", callback_body("completion", "task-x"))
    drill.check(
        response.status_code == 503 and response.json().get("error") == "storage (Redis) is unavailable",
        "`callback.spool_refused` (503: Redis was unreachable and the spool could not take it",
        (response.status_code, response.text),
    )
    await drill.expect_event(
        events.CALLBACK_SPOOL_REFUSED, "`callback.spool_refused` ... `reason` `full`", cursor, reason="full"
    )
    m_full = await scrape(full_stack)
    drill.check(
        m_full.get("elevenlabs_agent_callbacks_spool_refused_total", reason="full") >= 1,
        "`elevenlabs_agent_callbacks_spool_refused_total{reason}` ... refused ones got 503",
        m_full.get("elevenlabs_agent_callbacks_spool_refused_total", reason="full"),
    )
    await voice.close()
    drill.finish()


# --- 6. Delivery failures ----------------------------------------------------------------------------------


async def push_failing(
    drill: Drill, stack: Stack, conversation_id: str, eleven_id: str, mode: PushMode = "reject"
) -> tuple[str, Metrics]:
    """A result the push bridge does not take (`reject`: refuses the socket; `hang`: accepts it and
    never confirms): the runbook's symptoms. Returns (task id, metrics before)."""
    m0 = await scrape(stack)
    cursor = drill.count()
    stack.elevenlabs.push_mode = mode
    timeout = stack.settings.push_timeout_seconds
    hang = f"push bridge accepts the socket but never confirms (PUSH_TIMEOUT_SECONDS={timeout})"
    drill.fault("push bridge refuses every contextual_update" if mode == "reject" else hang)
    task_id = await stack.start_task(eleven_id, "result for a dead bridge")
    await stack.runner.wait_callbacks(1)
    assert stack.runner.callbacks[-1][0] == 200, stack.runner.callbacks

    if await drill.expect_event(events.DELIVERY_PUSH_FAILED, "`delivery.push_failed`", cursor, taskId=task_id):
        drill.mark("delivery.push_failed")

    async def failures(at_least: float) -> bool:
        m = await scrape(stack)
        return (
            m.get("elevenlabs_agent_deliveries_total", channel="websocket", outcome="failed")
            - m0.get("elevenlabs_agent_deliveries_total", channel="websocket", outcome="failed")
            >= at_least
        )

    drill.check(
        await poll(lambda: failures(1), 5) is not None,
        'elevenlabs_agent_deliveries_total{channel="websocket",outcome="failed"}',
        "not incremented",
    )
    drill.check(
        await poll(lambda: failures(3), 5) is not None,
        "pending results are retried by housekeeping every `HOUSEKEEPING_INTERVAL_SECONDS`",
        "fewer than 3 failed pushes in 5 s with a 0.2 s interval",
    )

    async def waiting() -> bool:
        return (await scrape(stack)).get("elevenlabs_agent_results_waiting") >= 1

    if drill.check(await poll(waiting, 5) is not None, "`elevenlabs_agent_results_waiting` ... growing", "stayed 0"):
        drill.mark("results_waiting >= 1")
    first_age = (await scrape(stack)).get("elevenlabs_agent_oldest_result_waiting_age_seconds")

    async def older() -> bool:
        return (await scrape(stack)).get("elevenlabs_agent_oldest_result_waiting_age_seconds") > first_age

    drill.check(
        await poll(older, 3) is not None, "`elevenlabs_agent_oldest_result_waiting_age_seconds` growing", first_age
    )
    drill.check(
        await stack.redis.hexists(pending_key(conversation_id), task_id),
        "result stays in elevenlabs:pending:{<id>} (nothing is lost)",
        await stack.redis.hgetall(pending_key(conversation_id)),
    )
    assert (await stack.task(task_id))["delivery"] == "pending"
    assert task_id not in context_ids(stack, eleven_id)
    return task_id, m0


async def test_drill_6a_push_bridge_fixed(
    drill: Drill, make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "PING_INTERVAL", 0.1)
    monkeypatch.setattr(housekeeping, "RECOVERY_GRACE", 0.0)
    stack = await drill.stack(make_stack, housekeeping_interval_seconds=0.2)
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    task_id, m0 = await push_failing(drill, stack, conversation_id, eleven_id)

    # Resolution: fix the bridge named by the session's pushUrl; housekeeping pushes the result again.
    push_url = await stack.redis.hget(session_key(conversation_id), "pushUrl")
    assert push_url == f"{stack.elevenlabs_server.ws_url}/push/{eleven_id}", push_url
    cursor = drill.count()
    began = time.monotonic()
    stack.elevenlabs.push_mode = "accept"
    assert await wait_delivered(stack, eleven_id, task_id) is not None, "housekeeping never pushed the result again"
    drill.mark("bridge fixed -> result pushed by housekeeping (recovered)")
    drill.say(f"bridge fixed: result pushed {time.monotonic() - began:.3f} s later")
    await drill.expect_event(events.DELIVERY_PUSHED, "`delivery.pushed`", cursor, taskId=task_id)

    async def drained() -> bool:
        m = await scrape(stack)
        return m.get("elevenlabs_agent_results_waiting") == 0

    drill.check(await poll(drained, 5) is not None, "results_waiting back to 0", "stayed > 0")
    assert not await stack.redis.hexists(pending_key(conversation_id), task_id)
    task = await stack.task(task_id)
    assert task["delivery"] == "delivered" and task["deliveredVia"] == "websocket", task
    await stack.housekeeping_passes(3)  # a confirmed result is not pushed again
    assert context_ids(stack, eleven_id) == [task_id], "delivered more than once"
    m1 = await scrape(stack)
    drill.say(
        "deliveries_total{websocket,failed} +"
        f"{m1.get('elevenlabs_agent_deliveries_total', channel='websocket', outcome='failed') - m0.get('elevenlabs_agent_deliveries_total', channel='websocket', outcome='failed'):.0f}"  # noqa: E501
    )
    await voice.close()
    drill.finish()


@contextlib.asynccontextmanager
async def sse(stack: Stack, conversation_id: str) -> AsyncIterator[AsyncIterator[str]]:
    url = f"/agent-conversations/api/{conversation_id}/events"
    async with stack.http.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        yield response.aiter_lines()


async def test_drill_6b_dead_bridge_cleared_then_relay(
    drill: Drill, make_stack: StackFactory, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge stays dead: clear the stuck session (`sessions purge`), the browser re-registers
    without pushUrl (relay) and gets the waiting result over SSE."""
    monkeypatch.setattr(housekeeping, "PING_INTERVAL", 0.1)
    monkeypatch.setattr(housekeeping, "RECOVERY_GRACE", 0.0)
    stack = await drill.stack(make_stack, housekeeping_interval_seconds=0.2, push_timeout_seconds=0.5)
    conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
    task_id, _ = await push_failing(drill, stack, conversation_id, eleven_id, mode="hang")
    failed = drill.events(events.DELIVERY_PUSH_FAILED, 0, taskId=task_id)
    accepted = drill.events(events.CALLBACK_ACCEPTED, 0, taskId=task_id)
    if failed and accepted:
        push_took = (parse_iso(failed[0]["timestamp"]) - parse_iso(accepted[0]["timestamp"])).total_seconds()
        drill.say(f"first push to the hung bridge failed {push_took:.3f} s after the callback was accepted")
    drill.check(
        any(r.get("error") == "TimeoutError" for r in failed),
        "`delivery.push_failed` (the push bridge ... timed out or did not confirm)",
        [r.get("error") for r in failed],
    )

    code, out, err = await run_cli_async("sessions", "purge", "--older-than", "0s", "--redis-url", redis_server.url)
    assert code == 0 and out.startswith("dry run: 1 of 1"), (code, out, err)
    backup = tmp_path / "sessions-stale.jsonl"
    code, out, err = await run_cli_async(
        "sessions", "purge", "--older-than", "0s", "--yes", "--backup", str(backup), "--redis-url", redis_server.url
    )
    assert code == 0 and out.startswith("deleted 1 of 1"), (code, out, err)
    assert not await stack.redis.exists(session_key(conversation_id))
    drill.check(
        await stack.redis.hexists(pending_key(conversation_id), task_id),
        "A session stuck on a dead bridge can be cleared ...; its results stay pending",
        "the pending result is gone",
    )
    code, out, err = await run_cli_async("stats", "--redis-url", redis_server.url, "--json")
    waiting = {f["family"]: f for f in orjson.loads(out)}["pending_results"]["resultsWaiting"]
    drill.check(waiting == 1, "results stay pending (stats)", waiting)

    # The browser re-registers without pushUrl (relay), subscribes, forwards and acknowledges.
    cursor = drill.count()
    began = time.monotonic()
    registered = await stack.register(conversation_id, eleven_id, push=False)
    assert registered.status_code == 200 and registered.json()["pendingResults"] == 1, registered.text
    async with sse(stack, conversation_id) as lines, asyncio.timeout(10):
        async for line in lines:
            if line.startswith("data: "):
                event = orjson.loads(line.removeprefix("data: "))
                assert event["taskId"] == task_id, event
                break
    ack = await stack.http.post(f"/agent-conversations/api/{conversation_id}/events/ack", json={"taskIds": [task_id]})
    assert ack.status_code == 200 and ack.json()["acknowledged"] == [task_id], ack.text
    drill.mark("relay re-registration -> result acknowledged (recovered)")
    drill.say(f"relay: result acknowledged {time.monotonic() - began:.3f} s after re-registering")
    await drill.expect_event(events.SSE_CONNECTED, "`sse.connected`", cursor)
    await drill.expect_event(events.DELIVERY_ACKNOWLEDGED, "`delivery.acknowledged`", cursor, taskId=task_id)
    task = await stack.task(task_id)
    assert task["delivery"] == "delivered" and task["deliveredVia"] == "relay", task
    assert not await stack.redis.exists(pending_key(conversation_id))

    async def drained() -> bool:
        return (await scrape(stack)).get("elevenlabs_agent_results_waiting") == 0

    drill.check(await poll(drained, 5) is not None, "results_waiting back to 0", "stayed > 0")
    await voice.close()
    drill.finish()
