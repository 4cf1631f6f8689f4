"""The callback spool (issue 13): callbacks that arrive while Redis is unreachable are journaled
locally, answered 200 and recorded (then delivered) when Redis answers again.

Real parts: a redis-server of each test's own (killed with SIGKILL), the service in process or as a
subprocess, the loopback cursor-runner and ElevenLabs fakes. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from elevenlabs_agent.redis.clients import open_redis
from elevenlabs_agent.redis.server import RedisClusterServers, RedisServer
from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner, callback_body, split_secret
from elevenlabs_agent.sim.server import LocalServer
from elevenlabs_agent.spool import SpooledCallback, read_lines, segments, slot_dirs
from tests.conftest import Stack, StackFactory
from tests.helpers import BROWSER_IDENTITY, nodes_holding, run_cli_async
from tests.serve_proc import ServeProcesses

WEBHOOK_SECRET = "spool-webhook-secret-0123456789"
RUNNER_SECRET = "spool-runner-secret-0123456789"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, AOF fsynced on every write (it is killed and restarted)."""
    server = RedisServer(tmp_path / "redis", appendonly=True, appendfsync="always")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def direct(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    yield client
    await client.aclose()


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def poll(check: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return False


def journal_lines(spool_dir: Path) -> list[Any]:
    return [line for slot in slot_dirs(spool_dir) for segment in segments(slot) for line in read_lines(segment)]


async def start_tasks(stack: Stack, eleven_id: str, count: int) -> list[tuple[str, str, str]]:
    """`count` dispatched tasks whose callbacks the test sends itself: (task id, callback URL, secret)."""
    stack.runner.callback_kind = "none"
    tasks = []
    for n in range(count):
        response = await stack.call_tool({"conversation_id": eleven_id, "prompt": f"spooled task {n}"})
        assert response.status_code == 200 and response.json()["success"] is True, response.text
        task_id = response.json()["taskId"]
        sent = next(r for r in stack.runner.received if r["id"] == task_id)
        url, secret = split_secret(sent["callbackUrl"])
        assert secret
        tasks.append((task_id, url, secret))
    return tasks


async def assert_delivered_once_after_replay(stack: Stack, eleven_id: str, tasks: list[tuple[str, str, str]]) -> None:
    """Once the spool is empty and the deliveries it started have settled, each task's result reached
    the voice session exactly once (the replayer spawns deliveries as it goes)."""

    async def drained() -> bool:
        return (await stack.http.get("/health")).json()["callbackSpool"]["records"] == 0

    assert await poll(drained, 5)
    await stack.deliveries_settled()
    conversation = stack.elevenlabs.conversations.get(eleven_id)
    assert conversation is not None
    delivered = [u["context_id"] for u in conversation.contextual_updates]
    assert sorted(delivered) == sorted(t for t, _, _ in tasks), "delivered more or less than once each"


async def post(stack: Stack, url: str, secret: str, body: dict[str, Any]) -> httpx.Response:
    return await stack.http.post(url, json=body, headers={"X-Cursor-Runner-Secret": secret})


# --- in process: outage, replay, forged callbacks, delivery once ------------------------------------


async def test_callbacks_during_a_redis_outage_are_spooled_then_recorded_and_delivered_once(
    make_stack: StackFactory, own_redis: RedisServer, direct: aioredis.Redis, tmp_path: Path
) -> None:
    logs = io.StringIO()
    with contextlib.redirect_stdout(logs):
        stack = await make_stack(redis_url=own_redis.url, redis_timeout_seconds=1.0)
    _, eleven_id, voice = await stack.live_conversation(push=True)
    tasks = await start_tasks(stack, eleven_id, 6)

    own_redis.kill()
    answers = []
    forged_ids = [tasks[0][0], tasks[3][0]]
    # Forged callbacks for real tasks, journaled before the real ones: discarded at replay, and the
    # real callback that follows still wins.
    for task_id in forged_ids:
        body = callback_body("completion", task_id)
        body["output"] = "FORGED"
        answers.append(await post(stack, f"{stack.service.url}/callback", "not-the-secret", body))
    answers.append(await post(stack, f"{stack.service.url}/callback", "whatever", callback_body("completion", "nope")))
    for task_id, url, secret in tasks:
        answers.append(await post(stack, url, secret, callback_body("completion", task_id)))
    assert [a.status_code for a in answers] == [200] * 9, [a.text for a in answers]
    assert all(a.json()["status"] == "accepted" and a.json()["success"] is True for a in answers)
    no_secret = await stack.http.post(f"{stack.service.url}/callback", json=callback_body("completion", "x"))
    assert no_secret.status_code == 401, "a callback without any secret is refused, never spooled"

    health = (await stack.http.get("/health")).json()
    assert health["redis"] == "disconnected" and health["callbackSpool"]["records"] == 9, health
    lines = journal_lines(tmp_path / "spool")
    assert len(lines) == 9 and all(line.record is not None for line in lines)
    raw = b"".join(p.read_bytes() for s in slot_dirs(tmp_path / "spool") for p in segments(s))
    assert all(secret.encode() not in raw for _, _, secret in tasks), "a plaintext secret in the journal"
    ready = await stack.http.get("/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["callbackSpool:records"][0]["status"] == "warn"

    returned_at = time.monotonic()
    await asyncio.to_thread(own_redis.start)

    async def all_delivered() -> bool:
        conversation = stack.elevenlabs.conversations.get(eleven_id)
        got = {u["context_id"] for u in conversation.contextual_updates} if conversation else set()
        return got >= {t for t, _, _ in tasks}

    assert await poll(all_delivered, 20), "spooled results not delivered after Redis returned"
    print(f"\nRedis return -> last delivery: {time.monotonic() - returned_at:.2f} s (6 results, ping every 0.5 s)")

    await assert_delivered_once_after_replay(stack, eleven_id, tasks)
    for task_id, _, _ in tasks:
        task = await direct.hgetall(f"cursor_task:{task_id}")
        assert task["status"] == "completed" and task.get("recordedAt"), task
        assert "FORGED" not in task["result"]
    assert not await direct.exists("cursor_task:nope")

    assert journal_lines(tmp_path / "spool") == []
    text = (await stack.http.get("/metrics")).text
    assert metric(text, "elevenlabs_agent_callbacks_spooled_total") >= 9
    assert metric(text, "elevenlabs_agent_callbacks_discarded_total", reason="forged") >= 2
    assert metric(text, "elevenlabs_agent_callbacks_discarded_total", reason="unknown_task") >= 1
    assert metric(text, "elevenlabs_agent_callbacks_replayed_total", outcome="accepted") >= 6
    assert metric(text, "elevenlabs_agent_callback_spool_records") == 0
    events = [orjson.loads(line)["event"] for line in logs.getvalue().splitlines() if line.startswith("{")]
    assert events.count("callback.spooled") == 9 and events.count("spool.discarded") == 3
    await voice.close()


async def test_spool_cap_reached_is_a_503_and_the_journal_stays_whole(
    make_stack: StackFactory, own_redis: RedisServer, direct: aioredis.Redis, tmp_path: Path
) -> None:
    stack = await make_stack(redis_url=own_redis.url, redis_timeout_seconds=1.0, callback_spool_max_bytes=6000)
    _, eleven_id, voice = await stack.live_conversation(push=False)
    tasks = await start_tasks(stack, eleven_id, 8)
    own_redis.kill()
    statuses = []
    for task_id, url, secret in tasks:
        body = callback_body("completion", task_id)
        body["output"] = "y" * 1500
        response = await post(stack, url, secret, body)
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert response.json()["error"] == "storage (Redis) is unavailable", response.text
    accepted = statuses.count(200)
    assert 0 < accepted < len(tasks) and statuses == [200] * accepted + [503] * (len(tasks) - accepted), statuses
    lines = journal_lines(tmp_path / "spool")
    assert len(lines) == accepted and all(line.record is not None for line in lines), "a refused record was written"
    assert sum(line.end - line.offset for line in lines) <= 6000
    text = (await stack.http.get("/metrics")).text
    assert metric(text, "elevenlabs_agent_callbacks_spool_refused_total", reason="full") >= len(tasks) - accepted

    await asyncio.to_thread(own_redis.start)

    async def replayed() -> bool:
        statuses = [await direct.hget(f"cursor_task:{t}", "status") for t, _, _ in tasks[:accepted]]
        return statuses == ["completed"] * accepted

    assert await poll(replayed, 20)
    # Refused ones were not kept: cursor-runner got a 503 for them, as before the spool.
    assert all([await direct.hget(f"cursor_task:{t}", "status") == "pending" for t, _, _ in tasks[accepted:]])
    await voice.close()


async def test_unwritable_spool_directory_is_a_503(
    make_stack: StackFactory, own_redis: RedisServer, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the spool directory should be")
    stack = await make_stack(redis_url=own_redis.url, redis_timeout_seconds=1.0, callback_spool_dir=str(blocker / "x"))
    _, eleven_id, voice = await stack.live_conversation(push=False)
    [(task_id, url, secret)] = await start_tasks(stack, eleven_id, 1)
    own_redis.kill()
    response = await post(stack, url, secret, callback_body("completion", task_id))
    assert response.status_code == 503, response.text
    health = (await stack.http.get("/health")).json()
    assert health["callbackSpool"]["writable"] is False
    await asyncio.to_thread(own_redis.start)
    await voice.close()


async def test_disk_full_is_a_503_with_nothing_kept(
    make_stack: StackFactory, own_redis: RedisServer, tmp_path: Path
) -> None:
    logs = io.StringIO()
    with contextlib.redirect_stdout(logs):
        stack = await make_stack(redis_url=own_redis.url, redis_timeout_seconds=1.0)
    _, eleven_id, voice = await stack.live_conversation(push=False)
    [(task_id, url, secret)] = await start_tasks(stack, eleven_id, 1)
    # The segment the next append opens is /dev/full: every write(2) to it fails with ENOSPC.
    [slot] = slot_dirs(tmp_path / "spool")
    segment = slot / f"{1:012d}.jsonl"
    segment.symlink_to("/dev/full")
    own_redis.kill()
    try:
        response = await post(stack, url, secret, callback_body("completion", task_id))
    finally:
        segment.unlink()
    assert response.status_code == 503 and response.json()["error"] == "storage (Redis) is unavailable", response.text
    health = (await stack.http.get("/health")).json()
    assert health["callbackSpool"]["records"] == 0, health
    text = (await stack.http.get("/metrics")).text
    assert metric(text, "elevenlabs_agent_callbacks_spool_refused_total", reason="write_failed") >= 1
    records = [orjson.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    failed = [r for r in records if r["event"] == "callback.spool_write_failed"]
    assert failed and "No space left on device" in failed[0]["error"], failed
    # Space again: the next callback goes to a new segment, and is replayed once Redis is back.
    response = await post(stack, url, secret, callback_body("completion", task_id))
    assert response.status_code == 200 and response.json()["status"] == "accepted", response.text
    assert [line.record.task_id for line in journal_lines(tmp_path / "spool") if line.record] == [task_id]
    await asyncio.to_thread(own_redis.start)

    async def recorded() -> bool:
        return (await stack.http.get("/health")).json()["callbackSpool"]["records"] == 0

    assert await poll(recorded, 10)
    await voice.close()


# --- processes: the service SIGKILLed while holding spooled callbacks --------------------------------


async def spool_in_a_process(
    procs: ServeProcesses, runner: FakeCursorRunner, runner_url: str, redis: RedisServer, conversation: str, count: int
) -> tuple[Any, list[str]]:
    """A `serve` process holding `count` spooled callbacks (Redis killed after the tasks started)."""
    service = procs.new(REDIS_URL=redis.url, CURSOR_RUNNER_URL=runner_url, REDIS_TIMEOUT_SECONDS="1")
    await service.start(path="/ready")
    async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=service.url, timeout=10) as client:
        created = await client.post("/agent-conversations/api/new", json={"conversationId": conversation})
        assert created.status_code == 201, created.text
        tasks = []
        for n in range(count):
            response = await client.post(
                "/agent-tools",
                json={"conversation_id": conversation, "prompt": f"task {n}"},
                headers={"X-Webhook-Secret": WEBHOOK_SECRET},
            )
            assert response.status_code == 200 and response.json()["success"] is True, response.text
            tasks.append(response.json()["taskId"])
        redis.kill()
        for task_id in tasks:
            sent = next(r for r in runner.received if r["id"] == task_id)
            url, secret = split_secret(sent["callbackUrl"])
            assert secret
            response = await client.post(
                url, json=callback_body("completion", task_id), headers={"X-Cursor-Runner-Secret": secret}
            )
            assert response.status_code == 200 and response.json()["status"] == "accepted", response.text
    return service, tasks


@pytest.mark.slow
async def test_service_sigkilled_with_spooled_callbacks_and_redis_down_a_new_process_brings_every_result_in(
    tmp_path: Path, own_redis: RedisServer, direct: aioredis.Redis
) -> None:
    runner = FakeCursorRunner(secret=RUNNER_SECRET, callback_kind="none")
    procs = ServeProcesses(
        tmp_path, WEBHOOK_SECRET=WEBHOOK_SECRET, CURSOR_RUNNER_SECRET=RUNNER_SECRET, LOG_LEVEL="info"
    )
    try:
        async with LocalServer(runner.app()) as runner_server:
            first, tasks = await spool_in_a_process(procs, runner, runner_server.url, own_redis, "conv-spool-kill", 20)
            first.kill()  # SIGKILL with 20 callbacks spooled and Redis down

            # A crash mid-write leaves a torn last line: half a record, no newline.
            spool_dir = tmp_path / f"spool-{first.port}"
            [slot] = slot_dirs(spool_dir)
            last = segments(slot)[-1]
            torn = SpooledCallback("torn-task", {"requestId": "torn-task", "success": True}, "0" * 64, False, "x")
            with last.open("ab") as f:
                f.write(torn.encode()[:40])

            await asyncio.to_thread(own_redis.start)
            second = procs.new(
                port=first.port, REDIS_URL=own_redis.url, CURSOR_RUNNER_URL=runner_server.url, REDIS_TIMEOUT_SECONDS="1"
            )
            returned_at = time.monotonic()
            await second.start(path="/ready")

            async def all_recorded() -> bool:
                async with direct.pipeline(transaction=False) as pipe:
                    for task_id in tasks:
                        pipe.hget(f"cursor_task:{task_id}", "recordedAt")
                    return all(await pipe.execute())

            assert await poll(all_recorded, 30), second.output()[-3000:]
            took = time.monotonic() - returned_at
            pending = await direct.hkeys("elevenlabs:pending:{conv-spool-kill}")
            assert sorted(pending) == sorted(tasks), "results not waiting for delivery in the outbox"
            async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=second.url, timeout=10) as client:
                conversation = (await client.get("/agent-conversations/api/conv-spool-kill")).json()
            tool_messages = [m for m in conversation["messages"] if m.get("taskId") in tasks]
            assert {m["taskId"] for m in tool_messages} == set(tasks)
            assert all(m["status"] == "completed" for m in tool_messages)

            async def skipped_logged() -> bool:
                return any(r["event"] == "spool.record_skipped" for r in second.records())

            assert await poll(skipped_logged, 5), "no log line for the torn record"
            assert await poll(lambda: asyncio.sleep(0, not segments(slot)), 5), "journal not removed after replay"
            print(f"\nnew process + Redis -> 20 spooled results recorded in {took:.2f} s (incl. process start)")
    finally:
        procs.kill_all()


# --- a 3-master cluster with one master down: only its slots spool ---------------------------------


@pytest.fixture
def spool_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """Its own 3-master cluster: AOF fsynced on every write (a master is SIGKILLed and comes back with
    its data), and the other masters keep serving their slots while one is down."""
    cluster = RedisClusterServers(tmp_path / "cluster")
    cluster.nodes = [
        RedisServer(
            tmp_path / "cluster" / f"node-{i}",
            appendonly=True,
            appendfsync="always",
            cluster=True,
            extra_args=("--cluster-require-full-coverage", "no"),
        )
        for i in range(3)
    ]
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.mark.slow
async def test_cluster_with_one_master_down_spools_only_that_masters_callbacks(
    make_stack: StackFactory, spool_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    client = open_redis(spool_cluster.url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5)
    try:
        await client.ping()  # learns the slot map
        stack = await make_stack(redis_url=spool_cluster.url, redis_timeout_seconds=0.5)
        # A conversation whose own keys leave one master free: that master goes down.
        for _ in range(20):
            conversation_id, eleven_id, voice = await stack.live_conversation(push=True)
            keys = [
                f"elevenlabs:conversation:{conversation_id}",
                f"elevenlabs:pending:{{{conversation_id}}}",
                f"elevenlabs:session:{conversation_id}",
                f"elevenlabs:alias:{eleven_id}",
                "elevenlabs:conversations",
            ]
            used = nodes_holding(client, keys)
            if len(used) < 3:
                break
            await voice.close()
        else:
            pytest.fail("no conversation left a master free in 20 tries")
        victim = next(n for n in spool_cluster.nodes if f"127.0.0.1:{n.port}" not in used)
        tasks = await start_tasks(stack, eleven_id, 12)
        on_victim = {
            t for t, _, _ in tasks if nodes_holding(client, [f"cursor_task:{t}"]) == {f"127.0.0.1:{victim.port}"}
        }
        assert on_victim and len(on_victim) < len(tasks), "tasks not spread over the masters; rerun"

        victim.kill()
        answers = {}
        for task_id, url, secret in tasks:
            response = await post(stack, url, secret, callback_body("completion", task_id))
            assert response.status_code == 200, response.text
            answers[task_id] = response.json()["status"]
        spooled = {t for t, status in answers.items() if status == "accepted"}
        # Exactly the callbacks of the down master's slots spool; the others are stored at once (no
        # script loaded on every master, no command table read from a master that may be the one
        # down, listing indexes and announcements best effort: redis/clients.py, stores/lua.py).
        assert spooled == on_victim, (spooled, on_victim)
        stored = {t for t, status in answers.items() if status == "completed"}
        assert stored | spooled == {t for t, _, _ in tasks}
        assert len(journal_lines(tmp_path / "spool")) == len(spooled)
        print(f"\ncluster, one master down: {len(tasks)} callbacks, {len(on_victim)} on it, {len(spooled)} spooled")

        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(spool_cluster.wait_ok)

        async def all_delivered() -> bool:
            conversation = stack.elevenlabs.conversations.get(eleven_id)
            got = [u["context_id"] for u in conversation.contextual_updates] if conversation else []
            return set(got) >= {t for t, _, _ in tasks}

        assert await poll(all_delivered, 30), "results of the down master not delivered after it returned"
        await assert_delivered_once_after_replay(stack, eleven_id, tasks)
        for task_id, _, _ in tasks:
            assert await client.hget(f"cursor_task:{task_id}", "recordedAt"), task_id
        await voice.close()
    finally:
        await client.aclose()


# --- the operator's CLI: spool status and spool replay ----------------------------------------------


@pytest.mark.slow
async def test_cli_spool_status_and_replay_drain_what_a_dead_process_left(
    tmp_path: Path, own_redis: RedisServer, direct: aioredis.Redis
) -> None:
    runner = FakeCursorRunner(secret=RUNNER_SECRET, callback_kind="none")
    procs = ServeProcesses(tmp_path, WEBHOOK_SECRET=WEBHOOK_SECRET, CURSOR_RUNNER_SECRET=RUNNER_SECRET)
    try:
        async with LocalServer(runner.app()) as runner_server:
            service, tasks = await spool_in_a_process(procs, runner, runner_server.url, own_redis, "conv-spool-cli", 5)
            spool_dir = tmp_path / f"spool-{service.port}"
            code, out, err = await run_cli_async("spool", "status", "--dir", spool_dir, "--json")
            assert code == 0, err
            status = orjson.loads(out)
            assert status["records"] == 5 and status["slots"][0]["heldByLiveProcess"] is True, status

            # Held by a live process: `replay` leaves it to that process.
            service.signal(signal.SIGSTOP)  # it cannot replay, but it still holds its slot
            await asyncio.to_thread(own_redis.start)
            try:
                code, out, err = await run_cli_async(
                    "spool", "replay", "--dir", spool_dir, "--redis-url", own_redis.url, "--json"
                )
                assert code == 0, err
                report = orjson.loads(out)
                assert report["outcomes"] == {} and report["heldByLiveProcess"] == ["0"], report
            finally:
                service.kill()  # SIGKILL: the slot is free now

            code, out, err = await run_cli_async("spool", "status", "--dir", spool_dir)
            assert code == 0 and "5 callback(s) waiting" in out, (out, err)
            # A task key that Redis cannot treat as a task (an error waiting does not cure): that
            # record is discarded, the others are not held up by it.
            broken, good = tasks[2], tasks[:2] + tasks[3:]
            await direct.delete(f"cursor_task:{broken}")
            await direct.set(f"cursor_task:{broken}", "not a hash")
            code, out, err = await run_cli_async("spool", "replay", "--dir", spool_dir, "--redis-url", own_redis.url)
            assert code == 0 and "replayed: 4 accepted, 1 redis_error" in out, (out, err)
            assert '"event": "spool.replayed"' in err  # log lines on stderr, the report on stdout
            assert '"reason": "redis_error"' in err
            for task_id in good:
                assert await direct.hget(f"cursor_task:{task_id}", "recordedAt"), task_id
            assert sorted(await direct.hkeys("elevenlabs:pending:{conv-spool-cli}")) == sorted(good)
            code, out, err = await run_cli_async("spool", "status", "--dir", spool_dir, "--json")
            assert code == 0 and orjson.loads(out)["records"] == 0, out
            code, out, err = await run_cli_async(
                "spool", "replay", "--dir", spool_dir, "--redis-url", "redis://127.0.0.1:1"
            )
            assert code == 0 and "nothing to replay" in out, (out, err)
    finally:
        procs.kill_all()


@pytest.mark.slow
async def test_workers_each_journal_to_their_own_slot_and_replay_it(
    tmp_path: Path, own_redis: RedisServer, direct: aioredis.Redis
) -> None:
    runner = FakeCursorRunner(secret=RUNNER_SECRET, callback_kind="none")
    procs = ServeProcesses(
        tmp_path, WEBHOOK_SECRET=WEBHOOK_SECRET, CURSOR_RUNNER_SECRET=RUNNER_SECRET, LOG_LEVEL="info", WORKERS="2"
    )
    try:
        async with LocalServer(runner.app()) as runner_server:
            service, tasks = await spool_in_a_process(procs, runner, runner_server.url, own_redis, "conv-workers", 40)
            spool_dir = tmp_path / f"spool-{service.port}"
            opened = [r for r in service.records() if r["event"] == "spool.opened"]
            assert len({r["directory"] for r in opened}) == 2, opened  # one slot per worker
            assert len(journal_lines(spool_dir)) == 40
            await asyncio.to_thread(own_redis.start)

            async def all_recorded() -> bool:
                return all([await direct.hget(f"cursor_task:{t}", "recordedAt") for t in tasks])

            assert await poll(all_recorded, 30), service.output()[-3000:]
            assert await poll(lambda: asyncio.sleep(0, journal_lines(spool_dir) == []), 5)
    finally:
        procs.kill_all()
