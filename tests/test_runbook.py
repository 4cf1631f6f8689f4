"""The operator runbook (docs/runbook.md) is executable and consistent with the code.

- Every fenced block whose info string is exactly `sh test` runs with `bash -e`, in document order,
  against a live stack: `python -m elevenlabs_agent serve` as a subprocess, on a redis-server this
  test owns (AOF on), with a FakeCursorRunner and a FakeElevenLabs served in the test's own event
  loop (so every wait here is async). A realistic incident is seeded through the real HTTP API first,
  and after the cleanup procedures the test checks that Redis holds what the runbook says it holds.
- Cross-checks: the log events, metrics, key patterns, endpoints, CLI commands, anchors and alerts the
  runbook names exist in the code (and the other way round where the runbook claims to be complete).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets
from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import Route

from elevenlabs_agent import cli, events, metrics
from elevenlabs_agent.http.routes import ROUTES
from elevenlabs_agent.redis.server import RedisServer, free_port
from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner
from elevenlabs_agent.sim.elevenlabs import FakeElevenLabs
from elevenlabs_agent.sim.server import LocalServer
from elevenlabs_agent.sim.stack import as_env, neighbours, service_fields
from elevenlabs_agent.stores import KEY_FAMILIES
from tests.helpers import BROWSER_IDENTITY, clean_env

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "runbook.md"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SRC = ROOT / "src" / "elevenlabs_agent"

BLOCK_TIMEOUT = 60.0
AGENT_ID = "agent_runbook"
WEBHOOK_SECRET = "runbook-webhook-" + secrets.token_urlsafe(18)
RUNNER_SECRET = "runbook-runner-" + secrets.token_urlsafe(18)
API_KEY = "xi-runbook-" + secrets.token_urlsafe(18)


# --- markdown: fenced blocks, headings, slugs -----------------------------------------------------

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
HEADING = re.compile(r"^ {0,3}(?P<marks>#{1,6})[ \t]+(?P<text>.*?)(?:[ \t]+#+)?[ \t]*$")
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def slugify(text: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped (letters, digits, '_', '-' and spaces
    stay), each space becomes '-'."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    slug: str
    line: int


@dataclass(frozen=True)
class CodeBlock:
    info: str
    code: str
    heading: str  # text of the nearest heading above ("" before the first)
    line: int  # 1-based line of the opening fence
    indent: int


@dataclass
class Markdown:
    headings: list[Heading] = field(default_factory=list)
    blocks: list[CodeBlock] = field(default_factory=list)
    prose: list[tuple[int, str, str]] = field(default_factory=list)  # (line, text, heading) outside fences

    @property
    def slugs(self) -> set[str]:
        return {h.slug for h in self.headings}

    def test_blocks(self) -> list[CodeBlock]:
        return [b for b in self.blocks if b.info == "sh test"]

    def inline_code(self) -> list[str]:
        return [m.group(2).strip() for _, text, _ in self.prose for m in INLINE_CODE.finditer(text)]

    def section(self, heading: str) -> list[str]:
        """Prose lines of the section under `heading` (up to the next heading of any level)."""
        return [text for _, text, h in self.prose if h == heading and not HEADING.match(text)]


def parse_markdown(text: str) -> Markdown:
    """Headings, fenced code blocks (with the heading each lives under) and prose lines.

    A fence may be indented (a block inside a list item); its content loses up to that much
    indentation, and the closing fence is the same character at least as long with nothing after it.
    Lines inside fences are never headings.
    """
    doc = Markdown()
    seen: dict[str, int] = {}
    current = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        opening = FENCE.match(line)
        if opening and not (opening["fence"][0] == "`" and "`" in opening["info"]):
            indent = len(opening["indent"].expandtabs(4))
            char, length = opening["fence"][0], len(opening["fence"])
            body: list[str] = []
            j = i + 1
            while j < len(lines):
                stripped = lines[j].strip()
                if stripped and set(stripped) == {char} and len(stripped) >= length:
                    break
                raw = lines[j].expandtabs(4)
                cut = min(indent, len(raw) - len(raw.lstrip(" ")))
                body.append(raw[cut:])
                j += 1
            code = "\n".join(body) + ("\n" if body else "")
            doc.blocks.append(CodeBlock(opening["info"].strip(), code, current, i + 1, indent))
            i = j + 1
            continue
        heading = HEADING.match(line)
        if heading:
            current = heading["text"].strip()
            slug = slugify(current)
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            doc.headings.append(Heading(len(heading["marks"]), current, f"{slug}-{n}" if n else slug, i + 1))
        doc.prose.append((i + 1, line, current))
        i += 1
    return doc


def table_rows(doc: Markdown, heading: str) -> list[list[str]]:
    """Body rows of the (first) pipe table in the section under `heading`."""
    rows = [line.strip() for line in doc.section(heading) if line.strip().startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row.strip("|"))] for row in rows]
    return [c for c in cells[1:] if not all(re.fullmatch(r":?-+:?", x) for x in c)]


def unquote(cell: str) -> str:
    return cell.strip().strip("`").strip()


def expand_alternation(pattern: str) -> list[str]:
    """`service\\.(draining|stopped)` -> ['service.draining', 'service.stopped'] (grep -E groups)."""
    match = re.fullmatch(r"(.*?)\(([^()]*)\)(.*)", pattern)
    if match:
        head, alternatives, tail = match.groups()
        return [name for alt in alternatives.split("|") for name in expand_alternation(head + alt + tail)]
    return [pattern.replace("\\.", ".").strip("^$")]


@pytest.fixture(scope="module")
def runbook_text() -> str:
    assert RUNBOOK.exists(), f"{RUNBOOK} is missing"
    return RUNBOOK.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def runbook(runbook_text: str) -> Markdown:
    return parse_markdown(runbook_text)


# --- the parser and the slugger themselves --------------------------------------------------------

SAMPLE = """\
# Title

```sh test
echo one
```

## Section A: things & stuff

- **Diagnosis**:

  ```sh test
  echo two
    indented more
  ```

- not a test:

  ```sh
  echo skipped
  ```

```sh testing
echo skipped too
```

~~~sh test
# not a heading
echo three
~~~

### cursor-runner unreachable or slow

````sh test
```
echo four
````

## Section A: things & stuff
"""


def test_parser_extracts_sh_test_blocks_in_order_with_their_headings() -> None:
    doc = parse_markdown(SAMPLE)
    blocks = doc.test_blocks()
    assert [(b.heading, b.code) for b in blocks] == [
        ("Title", "echo one\n"),
        ("Section A: things & stuff", "echo two\n  indented more\n"),
        ("Section A: things & stuff", "# not a heading\necho three\n"),
        ("cursor-runner unreachable or slow", "```\necho four\n"),
    ]
    assert blocks[1].indent == 2
    assert [h.text for h in doc.headings] == [
        "Title",
        "Section A: things & stuff",
        "cursor-runner unreachable or slow",
        "Section A: things & stuff",
    ]
    assert [h.slug for h in doc.headings] == [
        "title",
        "section-a-things--stuff",
        "cursor-runner-unreachable-or-slow",
        "section-a-things--stuff-1",
    ]
    assert "echo skipped" not in "".join(text for _, text, _ in doc.prose)


def test_parser_finds_every_sh_test_fence_of_the_runbook(runbook_text: str, runbook: Markdown) -> None:
    fences = [n for n, line in enumerate(runbook_text.splitlines(), 1) if re.fullmatch(r"\s*```sh test\s*", line)]
    blocks = runbook.test_blocks()
    assert [b.line for b in blocks] == fences
    assert all(b.heading and b.code.strip() for b in blocks), blocks
    assert any(b.indent > 0 for b in blocks), "the runbook has sh test blocks inside list items"
    assert not any(line.startswith(" ") for b in blocks for line in b.code.splitlines()[:1]), blocks


def test_slugify_matches_github() -> None:
    assert slugify("Clear stuck tasks") == "clear-stuck-tasks"
    assert slugify("cursor-runner unreachable or slow") == "cursor-runner-unreachable-or-slow"
    assert slugify("Raw redis-cli equivalents") == "raw-redis-cli-equivalents"
    assert slugify("What's new? (v2.0)") == "whats-new-v20"
    assert slugify("Diagnosis / resolution") == "diagnosis--resolution"
    assert slugify("I want to…") == "i-want-to"
    assert slugify("snake_case stays") == "snake_case-stays"


# --- the live stack -------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def spawn_serve(env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "elevenlabs_agent", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def stop_serve(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (drain), then a second SIGTERM (exit at once), then SIGKILL if it still runs."""
    for sig, wait in ((signal.SIGTERM, 0.3), (signal.SIGTERM, 10.0)):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        deadline = time.monotonic() + wait
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    if process.poll() is None:
        process.kill()
        await asyncio.to_thread(process.wait, 10)


@dataclass
class LiveStack:
    url: str
    redis_url: str
    redis: aioredis.Redis
    http: httpx.AsyncClient
    runner: FakeCursorRunner
    elevenlabs: FakeElevenLabs
    elevenlabs_server: LocalServer
    process: subprocess.Popen[bytes]
    log_file: Path
    backup_dir: Path
    workdir: Path

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    async def metric(self, name: str) -> float | None:
        text = (await self.http.get("/metrics")).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else None


@contextlib.asynccontextmanager
async def live_stack(tmp_path: Path) -> AsyncIterator[LiveStack]:
    redis_server = RedisServer(tmp_path / "redis", appendonly=True)
    redis_server.start()
    try:
        async with contextlib.AsyncExitStack() as exits:
            around = await exits.enter_async_context(
                neighbours(FakeElevenLabs(api_key=API_KEY), FakeCursorRunner(secret=RUNNER_SECRET))
            )
            runner, elevenlabs, el_server = around.runner, around.elevenlabs, around.elevenlabs_server
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log_file = tmp_path / "elevenlabs-agent.log"
            fields = service_fields(
                url,
                around,
                port=port,
                host="127.0.0.1",
                webhook_secret=WEBHOOK_SECRET,
                redis_url=redis_server.url,
                elevenlabs_agent_id=AGENT_ID,
                housekeeping_interval_seconds=1,
                log_level="info",
                callback_spool_dir=str(tmp_path / "spool"),
            )
            env = clean_env(**as_env(fields))
            process = spawn_serve(env, log_file)
            exits.push_async_callback(stop_serve, process)
            redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
            exits.push_async_callback(redis.aclose)
            http = await exits.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=15, headers=BROWSER_IDENTITY)
            )
            stack = LiveStack(
                url,
                redis_server.url,
                redis,
                http,
                runner,
                elevenlabs,
                el_server,
                process,
                log_file,
                tmp_path / "backups",
                tmp_path / "cwd",
            )
            stack.backup_dir.mkdir()
            stack.workdir.mkdir()
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, f"serve exited with {process.returncode}:\n{stack.log_text()}"
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/ready")).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"serve never became ready:\n{stack.log_text()}"
                await asyncio.sleep(0.05)
            yield stack
    finally:
        redis_server.stop()


# --- the incident the blocks diagnose --------------------------------------------------------------


@dataclass
class Scenario:
    live_conversation: str
    live_eleven_id: str
    completed_task: str
    failed_task: str
    fresh_task: str
    waiting_conversation: str
    waiting_task: str
    stuck: dict[str, dict[str, str]]  # key -> hash, written 2 days old
    stuck_ttl: dict[str, int]  # key -> seconds
    stale_session_key: str
    stale_session: dict[str, str]
    voice: list[Any]  # open ElevenLabs conversation sockets, closed at the end


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def seed(stack: LiveStack) -> Scenario:
    http, redis, auth = stack.http, stack.redis, {"X-Webhook-Secret": WEBHOOK_SECRET}
    voice: list[Any] = []

    async def conversation() -> str:
        response = await http.post("/agent-conversations/api/new", json={"agentId": AGENT_ID})
        assert response.status_code == 201, response.text
        conversation_id: str = response.json()["conversationId"]
        return conversation_id

    async def voice_session(conversation_id: str) -> str:
        """What the browser does: signed URL, open the voice socket, register the session (push bridge)."""
        response = await http.get("/signed-url", params={"agentId": AGENT_ID})
        assert response.status_code == 200, response.text
        ws = await websockets.connect(response.json()["signedUrl"])
        voice.append(ws)
        eleven_id: str = orjson.loads(await ws.recv())["conversation_initiation_metadata_event"]["conversation_id"]
        registration = {
            "sessionUrl": f"{stack.elevenlabs_server.ws_url}/v1/convai/conversation?agent_id={AGENT_ID}",
            "pushUrl": f"{stack.elevenlabs_server.ws_url}/push/{eleven_id}",
            "transport": "websocket",
            "metadata": {"agentId": AGENT_ID, "elevenConversationId": eleven_id},
        }
        response = await http.post(f"/agent-conversations/api/{conversation_id}/session", json=registration)
        assert response.status_code == 200, response.text
        return eleven_id

    async def tool_call(eleven_id: str, prompt: str, headers: dict[str, str] = auth) -> httpx.Response:
        return await http.post("/agent-tools", json={"conversation_id": eleven_id, "prompt": prompt}, headers=headers)

    async def task(task_id: str) -> dict[str, str]:
        return await redis.hgetall(f"cursor_task:{task_id}")  # type: ignore[no-any-return]

    # A live conversation with a registered push-capable session; a task that completes and is pushed.
    live = await conversation()
    live_eleven = await voice_session(live)
    response = await tool_call(live_eleven, "run the test suite and fix what fails")
    assert response.status_code == 200 and response.json()["success"], response.text
    completed = response.json()["taskId"]
    await stack.runner.wait_callbacks(1)
    assert stack.runner.callbacks[0][0] == 200, stack.runner.callbacks
    await stack.elevenlabs.wait_update(live_eleven, 1)
    await until(lambda: _field_is(redis, completed, "delivery", "delivered"), "the completed task's delivery")

    # cursor-runner answers 500 once: the dispatch fails.
    stack.runner.answer_status = 500
    response = await tool_call(live_eleven, "refactor the billing module")
    stack.runner.answer_status = 200
    assert response.status_code == 200 and not response.json()["success"], response.text
    failed = response.json()["taskId"]
    assert (await task(failed))["status"] == "failed"

    # A task that is dispatched but whose callback has not come yet (fresh, pending).
    stack.runner.callback_kind = "none"
    response = await tool_call(live_eleven, "upgrade the dependencies")
    stack.runner.callback_kind = "completion"
    assert response.status_code == 200 and response.json()["success"], response.text
    fresh = response.json()["taskId"]
    assert (await task(fresh))["status"] == "pending"

    # A tool call with the wrong secret, and a forged callback for the pending task.
    response = await tool_call(live_eleven, "delete everything", headers={"X-Webhook-Secret": "wrong-secret"})
    assert response.status_code == 401, response.text
    response = await http.post(
        "/callback",
        params={"secret": "forged-" + secrets.token_hex(8)},
        json={"requestId": fresh, "success": True, "output": "forged", "exitCode": 0},
    )
    assert response.status_code == 401, response.text
    assert (await task(fresh))["status"] == "pending"

    # A result that arrives after the conversation's session expired: it waits in the outbox.
    waiting_conversation = await conversation()
    waiting_eleven = await voice_session(waiting_conversation)
    session_key = f"elevenlabs:session:{waiting_conversation}"
    await redis.pexpire(session_key, 1)
    await until(lambda: _gone(redis, session_key), "the session to expire")
    response = await tool_call(waiting_eleven, "write the release notes")
    assert response.status_code == 200 and response.json()["success"], response.text
    waiting_task = response.json()["taskId"]
    await stack.runner.wait_callbacks(2)
    assert stack.runner.callbacks[1][0] == 200, stack.runner.callbacks
    pending_key = "elevenlabs:pending:{" + waiting_conversation + "}"
    await until(lambda: _hlen_is(redis, pending_key, 1), "the result to wait in the outbox")

    # Two tasks stuck in `pending` for two days (cursor-runner lost them), written as the service writes them.
    two_days_ago = iso(datetime.now(UTC) - timedelta(days=2))
    stuck: dict[str, dict[str, str]] = {}
    stuck_ttl: dict[str, int] = {}
    for n, ttl in enumerate((7_200, 10_800), 1):
        task_id = f"stuck-{n}-{secrets.token_hex(6)}"
        prompt = f"stuck task {n}: migrate the database"
        value = {
            "taskId": task_id,
            "conversationId": live,
            "toolName": "code_task",
            "toolArgs": orjson.dumps({"prompt": prompt}).decode(),
            "prompt": prompt,
            "status": "pending",
            "createdAt": two_days_ago,
            "updatedAt": two_days_ago,
            "tokenHash": hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
        }
        key = f"cursor_task:{task_id}"
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=value)
            pipe.expire(key, ttl)
            await pipe.execute()
        stuck[key], stuck_ttl[key] = value, ttl

    # A session registered two hours ago that somebody keeps alive (TTL 600 s, still counted live).
    stale_conversation = await conversation()
    stale_key = f"elevenlabs:session:{stale_conversation}"
    stale = {
        "conversationId": stale_conversation,
        "sessionUrl": f"{stack.elevenlabs_server.ws_url}/v1/convai/conversation?agent_id={AGENT_ID}",
        "sessionId": str(uuid.uuid4()),
        "transport": "websocket",
        "metadata": orjson.dumps({"agentId": AGENT_ID}).decode(),
        "registeredAt": iso(datetime.now(UTC) - timedelta(hours=2)),
    }
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(stale_key, mapping=stale)
        pipe.expire(stale_key, 600)
        await pipe.execute()

    # Housekeeping (every second here) has seen all of it.
    async def gauges_show_the_incident() -> bool:
        return (
            await stack.metric("elevenlabs_agent_stuck_pending_tasks") == 2.0
            and await stack.metric("elevenlabs_agent_results_waiting") == 1.0
            and await stack.metric("elevenlabs_agent_active_sessions") == 2.0
        )

    await until(gauges_show_the_incident, "housekeeping to report the incident in /metrics")
    return Scenario(
        live,
        live_eleven,
        completed,
        failed,
        fresh,
        waiting_conversation,
        waiting_task,
        stuck,
        stuck_ttl,
        stale_key,
        stale,
        voice,
    )


async def _field_is(redis: aioredis.Redis, task_id: str, name: str, value: str) -> bool:
    return await redis.hget(f"cursor_task:{task_id}", name) == value  # type: ignore[no-any-return]


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)


async def _hlen_is(redis: aioredis.Redis, key: str, count: int) -> bool:
    return await redis.hlen(key) == count  # type: ignore[no-any-return]


async def scan(redis: aioredis.Redis, pattern: str) -> set[str]:
    return {key async for key in redis.scan_iter(match=pattern, count=1000)}


def table_column(output: str, title: str, column: int = 0) -> list[str]:
    """One column of the first table the CLI printed (rich box drawing) whose title starts with `title`."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith(title)), None)
    assert start is not None, f"no table titled {title!r} in the output"
    values = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            values.append(line.split("│")[column + 1].strip())
    return values


def read_backup(path: Path) -> list[dict[str, Any]]:
    assert path.exists(), f"no backup at {path}"
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- running the blocks ---------------------------------------------------------------------------


@dataclass
class BlockRun:
    block: CodeBlock
    returncode: int | None  # None: timed out
    output: str
    seconds: float

    def describe(self) -> str:
        status = "TIMED OUT" if self.returncode is None else f"exit {self.returncode}"
        code = "".join(f"    $ {line}\n" for line in self.block.code.splitlines())
        return (
            f"--- [{self.block.heading}] (runbook line {self.block.line}, {status}, {self.seconds:.1f} s)\n"
            f"{code}{self.output}"
        )


async def run_block(block: CodeBlock, env: dict[str, str], cwd: Path) -> BlockRun:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-e",
        "-c",
        block.code,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a timeout ends the whole pipeline
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), BLOCK_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = await process.communicate()
        return BlockRun(block, None, output.decode(errors="replace"), time.monotonic() - started)
    return BlockRun(block, process.returncode, output.decode(errors="replace"), time.monotonic() - started)


class Checks:
    """What the runbook says each procedure does, checked in Redis (and in the block's output) right
    after the block ran; `before` snapshots what the check compares against."""

    def __init__(self, stack: LiveStack, scenario: Scenario) -> None:
        self.stack, self.s, self.redis = stack, scenario, stack.redis
        self.snapshot: dict[str, Any] = {}
        self.ran: set[str] = set()

    async def before(self, heading: str) -> None:
        if heading == "Clear stuck tasks":
            self.snapshot["tasks"] = await scan(self.redis, "cursor_task:*")
            self.snapshot["conversations"] = await scan(self.redis, "elevenlabs:conversation:*")
            self.snapshot["stuck_pttl"] = {key: await self.redis.pttl(key) for key in self.s.stuck}
        if heading == "Clear stuck sessions":
            self.snapshot["sessions"] = await scan(self.redis, "elevenlabs:session:*")

    async def after(self, run: BlockRun) -> list[str]:
        """Run the checks for this block's section; each one on its own, so one failure hides no other."""
        checks: dict[str, list[Callable[[str], Awaitable[None]]]] = {
            "Health checks": [self.health_checks],
            "Verify after a restart": [self.verify_after_restart],
            "Inspect": [self.stats_lists_key_patterns, self.inspect_lists_stuck_tasks],
            "Clear stuck tasks": [self.clear_stuck_tasks],
            "Clear stuck sessions": [self.clear_stuck_sessions],
            "Restore a backup": [self.restore_a_backup],
            "Raw redis-cli equivalents": [self.raw_unlink_clears_sessions, self.raw_snapshot_written],
            "cursor-runner unreachable or slow": [self.dispatch_diagnosis],
            "Expired sessions": [self.expired_sessions_diagnosis],
            "Webhook failures": [self.webhook_diagnosis],
            "Callback failures": [self.callback_diagnosis],
            "Delivery failures": [self.delivery_diagnosis],
            "Spooled callbacks": [self.spooled_callbacks],
        }
        failures = []
        for check in checks.get(run.block.heading, []):
            self.ran.add(run.block.heading)
            try:
                await check(run.output)
            except AssertionError as exc:
                failures.append(f"{check.__name__}: {exc}")
        return failures

    async def health_checks(self, output: str) -> None:
        assert '"redis":"connected"' in output and '"draining":false' in output, "/health body"
        assert "ready: 200" in output, "/ready status"
        assert '"status":"ok"' in output and '"cursorRunner":"connected"' in output, "/config/health body"
        # "`elevenlabs-agent health` prints one line (`healthy: … ready=200 redis=pass (0.4 ms) draining=False`)"
        line = rf"healthy: {re.escape(self.stack.url)} ready=200 redis=pass \([\d.]+ ms\) draining=False"
        assert re.search(line, output), "the `elevenlabs-agent health` line"

    async def verify_after_restart(self, output: str) -> None:
        # "Expect exit 0, `elevenlabs_agent_redis_up 1.0`, `elevenlabs_agent_draining 0.0`, and a
        # `service.started` log line."
        assert "elevenlabs_agent_redis_up 1.0" in output
        assert "elevenlabs_agent_draining 0.0" in output
        assert '"event": "service.started"' in self.stack.log_text()

    async def stats_lists_key_patterns(self, output: str) -> None:
        # "`elevenlabs-agent stats` lists these" (the Key patterns table): every family's pattern, verbatim.
        stats = table_column(output, "elevenlabs-agent keys", 1)
        assert stats == [f.pattern for f in KEY_FAMILIES], f"`stats` shows the key patterns as {stats}"

    async def inspect_lists_stuck_tasks(self, output: str) -> None:
        # `tasks list --status pending --older-than 24h` finds the stuck tasks, and only them.
        listed = table_column(output, "tasks (")
        assert sorted(listed) == sorted(v["taskId"] for v in self.s.stuck.values()), f"stuck tasks listed: {listed}"

    async def clear_stuck_tasks(self, output: str) -> None:
        remaining = await scan(self.redis, "cursor_task:*")
        assert not remaining & set(self.s.stuck), f"stuck tasks survived the purge: {remaining & set(self.s.stuck)}"
        assert remaining == self.snapshot["tasks"] - set(self.s.stuck), "the purge deleted other tasks"
        assert await self.redis.hget(f"cursor_task:{self.s.fresh_task}", "status") == "pending"
        conversations = await scan(self.redis, "elevenlabs:conversation:*")
        assert conversations == self.snapshot["conversations"], "conversation history changed"
        records = read_backup(self.stack.backup_dir / "tasks-stuck.jsonl")
        assert sorted(r["key"] for r in records) == sorted(self.s.stuck), records
        for record in records:
            assert record["type"] == "hash", record
            assert record["value"] == self.s.stuck[record["key"]], record
            original = self.snapshot["stuck_pttl"][record["key"]]
            assert 0 < record["ttl_ms"] <= original, (record, original)
            assert original - record["ttl_ms"] < 30_000, (record, original)
        listed = table_column(output, "tasks (")  # the closing `tasks list` lists nothing stuck any more
        assert listed == [], f"still listed as stuck after the purge: {listed}"

    async def clear_stuck_sessions(self, output: str) -> None:
        sessions = await scan(self.redis, "elevenlabs:session:*")
        assert self.s.stale_session_key not in sessions, "the 2-hour-old session survived"
        assert sessions == self.snapshot["sessions"] - {self.s.stale_session_key}, "other sessions were deleted"
        assert f"elevenlabs:session:{self.s.live_conversation}" in sessions, "the live session was deleted"
        records = read_backup(self.stack.backup_dir / "sessions-stale.jsonl")
        assert [r["key"] for r in records] == [self.s.stale_session_key], records
        assert records[0]["value"] == self.s.stale_session, records
        assert 0 < records[0]["ttl_ms"] <= 600_000, records

    async def restore_a_backup(self, output: str) -> None:
        recorded = {r["key"]: r["ttl_ms"] for r in read_backup(self.stack.backup_dir / "tasks-stuck.jsonl")}
        for key, value in self.s.stuck.items():
            assert await self.redis.hgetall(key) == value, f"{key} was not restored as it was"
            pttl = await self.redis.pttl(key)
            assert abs(pttl - recorded[key]) <= 2_000, f"{key}: PTTL {pttl} after restore, {recorded[key]} recorded"
        listed = table_column(output, "tasks (")
        assert sorted(listed) == sorted(v["taskId"] for v in self.s.stuck.values()), f"listed after restore: {listed}"

    async def raw_unlink_clears_sessions(self, output: str) -> None:
        assert not await scan(self.redis, "elevenlabs:session:*"), "sessions remain after the raw UNLINK"
        assert await scan(self.redis, "cursor_task:*") >= set(self.s.stuck), "the raw commands touched tasks"

    async def raw_snapshot_written(self, output: str) -> None:
        snapshot = self.stack.backup_dir / "redis-snapshot.rdb"
        assert snapshot.exists() and snapshot.stat().st_size > 0, "no RDB snapshot was written"
        assert snapshot.read_bytes()[:5] == b"REDIS", "the snapshot is not an RDB file"

    async def dispatch_diagnosis(self, output: str) -> None:
        assert '"event": "dispatch.failed"' in output and '"reason": "rejected"' in output
        assert 'elevenlabs_agent_dispatches_total{outcome="rejected"} 1.0' in output

    async def expired_sessions_diagnosis(self, output: str) -> None:
        assert '"event": "delivery.no_session"' in output and self.s.waiting_task in output

    async def webhook_diagnosis(self, output: str) -> None:
        assert '"event": "webhook.unauthorized"' in output
        assert 'elevenlabs_agent_webhooks_total{outcome="unauthorized"} 1.0' in output

    async def callback_diagnosis(self, output: str) -> None:
        assert '"event": "callback.unauthorized"' in output and self.s.fresh_task in output
        assert '"event": "callback.accepted"' in output
        assert 'elevenlabs_agent_callbacks_total{outcome="unauthorized"} 1.0' in output

    async def spooled_callbacks(self, output: str) -> None:
        # Nothing spooled in this scenario (Redis stays up): the slot of the running service, empty;
        # `replay` leaves a slot a live process holds to it.
        if "callback(s) waiting" in output:  # spool status
            assert f"{self.stack.workdir.parent / 'spool'}: 0 callback(s) waiting" in output
            assert "elevenlabs_agent_callback_spool_records 0.0" in output
        else:  # spool replay
            assert "replayed: nothing to replay" in output

    async def delivery_diagnosis(self, output: str) -> None:
        assert '"event": "delivery.pushed"' in output and self.s.completed_task in output
        assert "elevenlabs_agent_results_waiting 1.0" in output


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_runbook_procedures_work_against_a_live_stack(tmp_path: Path, runbook: Markdown) -> None:
    blocks = runbook.test_blocks()
    assert blocks, "no `sh test` blocks in the runbook"
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "elevenlabs-agent").exists(), f"no elevenlabs-agent in {bin_dir}"
    started = time.monotonic()
    async with live_stack(tmp_path) as stack:
        scenario = await seed(stack)
        try:
            env = clean_env(
                PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                AGENT_URL=stack.url,
                REDIS_URL=stack.redis_url,
                BACKUP_DIR=str(stack.backup_dir),
                LOG_FILE=str(stack.log_file),
                CALLBACK_SPOOL_DIR=str(tmp_path / "spool"),
            )
            checks = Checks(stack, scenario)
            runs: list[BlockRun] = []
            problems: list[str] = []
            for block in blocks:
                await checks.before(block.heading)
                run = await run_block(block, env, stack.workdir)
                runs.append(run)
                if run.returncode != 0:
                    problems.append(f"block failed:\n{run.describe()}")
                    continue
                if failures := await checks.after(run):
                    said = "\n".join(failures)
                    problems.append(f"block ran but did not do what the runbook says:\n{said}\n{run.describe()}")
            assert stack.process.poll() is None, f"serve died during the blocks:\n{stack.log_text()[-5000:]}"
        finally:
            for ws in scenario.voice:
                await ws.close()
    transcript = "\n".join(run.describe() for run in runs)
    print(f"{len(runs)} runbook blocks in {time.monotonic() - started:.1f} s\n{transcript}")
    missing = {
        "Health checks",
        "Verify after a restart",
        "Inspect",
        "Clear stuck tasks",
        "Clear stuck sessions",
        "Restore a backup",
        "Raw redis-cli equivalents",
    } - checks.ran
    assert not missing, f"runbook blocks this test checks were not found (renamed headings?): {sorted(missing)}"
    assert not problems, "\n\n".join(problems)


# --- cross-checks: log events ---------------------------------------------------------------------

EVENT_TOKEN = re.compile(r"^[a-z_]+\.[a-z_]+$")
NOT_EVENTS = (".py", ".yml", ".md", ".jsonl", ".rdb", ".service")
DEFINED_EVENTS = {v for k, v in vars(events).items() if k.isupper() and isinstance(v, str)}


def runbook_event_tokens(doc: Markdown) -> set[str]:
    return {t for t in doc.inline_code() if EVENT_TOKEN.match(t) and not t.endswith(NOT_EVENTS)}


def test_log_events_named_in_runbook_are_defined(runbook: Markdown) -> None:
    named = runbook_event_tokens(runbook)
    assert len(named) > 10, named
    unknown = sorted(named - DEFINED_EVENTS)
    assert not unknown, f"the runbook names log events that events.py does not define: {unknown}"


def test_log_greps_in_runbook_match_defined_events(runbook_text: str) -> None:
    """`grep -F '"event": "x.y"'`, `grep -E '"event": "x\\.(a|b)"'` and `jq 'select(.event=="x.y")'`
    must look for events that exist: a grep for a misspelt event finds nothing, silently."""
    patterns = re.findall(r'"event": "([^"]+)"', runbook_text) + re.findall(r'\.event=="([^"]+)"', runbook_text)
    assert patterns, "no log greps found in the runbook"
    wanted = {name for pattern in patterns for name in expand_alternation(pattern)}
    unknown = sorted(wanted - DEFINED_EVENTS)
    assert not unknown, f"the runbook's log greps look for events that are never logged: {unknown}"


def warning_and_error_events() -> dict[str, list[str]]:
    """Event name -> where it is logged at warning level or above (multi-line calls included)."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"warning", "error", "exception", "critical"}
                and node.args
            ):
                continue
            arg, where = node.args[0], f"{shown(path)}:{node.lineno}"
            if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == "events":
                name = getattr(events, arg.attr, None)
                assert isinstance(name, str), f"{where}: events.{arg.attr} is not defined"
                found.setdefault(name, []).append(where)
            elif isinstance(arg, ast.Constant) and isinstance(arg.value, str) and EVENT_TOKEN.match(arg.value):
                found.setdefault(arg.value, []).append(where)
    return found


def test_warning_and_error_events_are_in_runbook(runbook: Markdown) -> None:
    logged = warning_and_error_events()
    assert len(logged) > 5, logged
    named = runbook_event_tokens(runbook)
    missing = {name: where for name, where in logged.items() if name not in named}
    assert not missing, f"events logged at warning/error level that the runbook does not name: {missing}"


# --- cross-checks: metrics ------------------------------------------------------------------------


def exported_metric_families() -> dict[str, set[str]]:
    """Family name -> the sample names /metrics exposes for it (from the collectors in metrics.py)."""
    families: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, Counter | Gauge | Histogram):
            continue
        (family,) = collector.describe()
        if isinstance(collector, Counter):
            families[family.name] = {family.name + "_total"}
        elif isinstance(collector, Histogram):
            families[family.name] = {family.name + s for s in ("", "_bucket", "_count", "_sum")}
        else:
            families[family.name] = {family.name}
    return families


def runbook_metric_names(text: str) -> set[str]:
    names = set(re.findall(r"\belevenlabs_agent_[a-z_]+", text))
    for alternatives in re.findall(r"\belevenlabs_agent_\(([a-z_|]+)\)", text):
        names |= {"elevenlabs_agent_" + alt for alt in alternatives.split("|")}
    return names


def test_metrics_named_in_runbook_are_exported(runbook_text: str) -> None:
    families = exported_metric_families()
    exported = set().union(*families.values())
    named = runbook_metric_names(runbook_text)
    assert len(named) > 10, named
    unknown = sorted(named - exported)
    assert not unknown, f"the runbook names metrics the service does not export: {unknown}"
    # label names in selectors such as `…_total{route,method,status}` or `{channel="none",outcome=…}`
    label_names = {
        family.name + suffix: set(collector._labelnames)
        for collector in vars(metrics).values()
        if isinstance(collector, Counter | Gauge | Histogram)
        for family in collector.describe()
        for suffix in ("", "_total")
    }
    wrong = []
    for name, selector in re.findall(r"\b(elevenlabs_agent_[a-z_]+)\{([^}]*)\}", runbook_text):
        labels = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=|,|$)", selector))
        if name in label_names and not labels <= label_names[name]:
            wrong.append(f"{name}{{{selector}}}: no label {sorted(labels - label_names[name])}")
    assert not wrong, f"the runbook selects on labels the metrics do not have: {wrong}"


def test_exported_metrics_are_in_runbook(runbook_text: str) -> None:
    named = runbook_metric_names(runbook_text)
    missing = sorted(name for name, samples in exported_metric_families().items() if not samples & named)
    assert not missing, f"metrics the service exports that the runbook never names: {missing}"


# --- cross-checks: Redis key patterns -------------------------------------------------------------

PLACEHOLDER = re.compile(r"\{<[^>]+>\}|\{[A-Za-z]+\}")


@dataclass(frozen=True)
class KeyRow:
    documented: str
    pattern: str
    redis_type: str
    ttl: int | str | None  # seconds, None = persistent, str = unparsable lifetime


def key_pattern_rows(doc: Markdown) -> list[KeyRow]:
    rows = []
    for cells in table_rows(doc, "Key patterns"):
        documented = unquote(cells[0])
        lifetime = cells[2]
        ttl = re.search(r"TTL (\d+) s", lifetime)
        parsed: int | str | None = int(ttl.group(1)) if ttl else None if "persistent" in lifetime else lifetime
        rows.append(KeyRow(documented, PLACEHOLDER.sub("*", documented), cells[1].strip(), parsed))
    return rows


def row_matches(row: KeyRow, pattern: str) -> bool:
    """The runbook's pattern is the family's SCAN pattern, or a literal key name the pattern matches
    (the lock family is documented by its one key, `elevenlabs:lock:purge`)."""
    return row.pattern == pattern or ("*" not in row.pattern and fnmatchcase(row.pattern, pattern))


def test_runbook_key_patterns_are_key_families(runbook: Markdown) -> None:
    rows = key_pattern_rows(runbook)
    assert len(rows) >= 5, rows
    problems = []
    for row in rows:
        matching = [f for f in KEY_FAMILIES if row_matches(row, f.pattern)]
        if len(matching) != 1:
            problems.append(f"`{row.documented}` matches {len(matching)} key families: {[f.name for f in matching]}")
            continue
        fam = matching[0]
        if row.redis_type != fam.redis_type:
            problems.append(f"`{row.documented}`: runbook says {row.redis_type}, {fam.name} is a {fam.redis_type}")
        if row.ttl != fam.default_ttl:
            problems.append(f"`{row.documented}`: runbook lifetime {row.ttl!r}, {fam.name} TTL is {fam.default_ttl}")
    assert not problems, "\n".join(problems)


def test_every_key_family_is_in_runbook_table(runbook: Markdown) -> None:
    rows = key_pattern_rows(runbook)
    missing = [f"{f.name} ({f.pattern})" for f in KEY_FAMILIES if not any(row_matches(r, f.pattern) for r in rows)]
    assert not missing, f"key families missing from the runbook's Key patterns table: {missing}"


# --- cross-checks: endpoints ----------------------------------------------------------------------

FILESYSTEM_ROOTS = ("/var/", "/opt/", "/etc/", "/usr/", "/tmp/", "/home/", "/srv/", "/run/")
ENDPOINT = re.compile(r"^(?:(?P<method>GET|POST|PUT|PATCH|DELETE|HEAD)\s+)?(?P<path>/[^\s?#`\"']*)")


def route_matches(path: str, route: str) -> bool:
    """Segment by segment; a route's `{param}` takes any segment, a documented `{...}` only a param."""
    doc_segments, route_segments = path.rstrip("/").split("/"), route.rstrip("/").split("/")
    if len(doc_segments) != len(route_segments):
        return False
    for documented, real in zip(doc_segments, route_segments, strict=True):
        if real.startswith("{"):
            continue
        if documented != real:
            return False
    return True


def test_endpoints_in_runbook_are_routes(runbook_text: str, runbook: Markdown) -> None:
    routes = [r for r in ROUTES if isinstance(r, Route)]
    named: list[tuple[str | None, str]] = []
    for span in runbook.inline_code():
        match = ENDPOINT.match(span)
        if match and not match["path"].startswith(FILESYSTEM_ROOTS):
            named.append((match["method"], match["path"]))
    named += [(None, p) for p in re.findall(r"\$AGENT_URL(/[^\s\"'?#]*)", runbook_text)]
    assert len(named) > 5, named
    problems = []
    for method, path in named:
        matching = [r for r in routes if route_matches(path, r.path)]
        if not matching:
            problems.append(f"{method or ''} {path}: no such route".strip())
        elif method is not None and not any(method in (r.methods or ()) for r in matching):
            problems.append(f"{method} {path}: the route does not take {method}")
    # route labels (`route="/callback"`) are route templates, exactly
    templates = {r.path for r in routes} | {"unmatched"}
    labels = re.findall(r'route="([^"]+)"', runbook_text)
    problems += [f'route="{label}": not a route template' for label in labels if label not in templates]
    assert not problems, "\n".join(problems)


# --- cross-checks: CLI ----------------------------------------------------------------------------

CLI_MENTION = re.compile(r"(?:^|[|;&(])\s*elevenlabs-agent\s+([a-z][\w-]*)(?:[ \t]+([a-z][\w-]*))?", re.M)


def cli_leaf_commands(group: click.Group = cli.main, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    leaves: set[tuple[str, ...]] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            leaves |= cli_leaf_commands(command, (*prefix, name))
        else:
            leaves.add((*prefix, name))
    return leaves


def runbook_cli_mentions(doc: Markdown) -> list[tuple[str, ...]]:
    """`elevenlabs-agent <command> [<subcommand>]` where it is run: at the start of an inline code span
    or of a shell command in a code block (not `systemctl restart elevenlabs-agent`, the unit name)."""
    texts = doc.inline_code() + [b.code for b in doc.blocks]
    mentions = []
    for text in texts:
        for match in CLI_MENTION.finditer(text):
            mentions.append(tuple(w for w in match.groups() if w))
    return mentions


def test_cli_commands_in_runbook_exist(runbook: Markdown) -> None:
    mentions = runbook_cli_mentions(runbook)
    assert len(mentions) > 5, mentions
    problems = []
    for words in mentions:
        command = cli.main.commands.get(words[0])
        if command is None:
            problems.append(f"elevenlabs-agent {' '.join(words)}: no command {words[0]!r}")
        elif isinstance(command, click.Group) and (len(words) < 2 or words[1] not in command.commands):
            problems.append(
                f"elevenlabs-agent {' '.join(words)}: {words[0]} has the subcommands {sorted(command.commands)}"
            )
    assert not problems, "\n".join(problems)


def test_every_cli_command_is_in_runbook(runbook: Markdown) -> None:
    mentions = runbook_cli_mentions(runbook)
    mentioned = {m[:2] for m in mentions} | {m[:1] for m in mentions}
    spans = set(runbook.inline_code())
    missing = sorted(
        " ".join(leaf)
        for leaf in cli_leaf_commands()
        if leaf not in mentioned and " ".join(leaf) not in spans  # `serve` in backticks counts too
    )
    assert not missing, f"CLI commands the runbook never mentions: {missing}"


# --- cross-checks: anchors and alerts -------------------------------------------------------------


def test_intra_document_links_resolve(runbook: Markdown) -> None:
    anchors = [(n, a) for n, text, _ in runbook.prose for a in re.findall(r"\]\(#([^)\s]+)\)", text)]
    assert anchors, "no intra-document links found"
    broken = [f"line {n}: #{a}" for n, a in anchors if a not in runbook.slugs]
    assert not broken, f"links to headings that do not exist: {broken}"


def test_alerts_match_runbook(runbook_text: str, runbook: Markdown) -> None:
    if not ALERTS.exists():
        pytest.fail(
            f"{shown(ALERTS)} does not exist (yet): the runbook's Alerts section refers to it, "
            "so every alert it defines must be named in the runbook and link to an existing section"
        )
    import yaml

    data = yaml.safe_load(ALERTS.read_text()) or {}
    rules = [r for g in data.get("groups") or [] for r in g.get("rules") or [] if "alert" in r]
    assert rules, f"{shown(ALERTS)} defines no alerts"
    table = {
        unquote(cells[0]): (cells[1].strip(), re.search(r"\(#([^)]+)\)", cells[2]))
        for cells in table_rows(runbook, "Alerts")
    }
    problems = []
    for rule in rules:
        name = rule["alert"]
        if not re.search(rf"\b{re.escape(name)}\b", runbook_text):
            problems.append(f"{name}: not named in the runbook")
        url = str((rule.get("annotations") or {}).get("runbook_url", ""))
        link = re.search(r"docs/runbook\.md#([\w-]+)", url)
        if link is None:
            problems.append(f"{name}: runbook_url {url!r} does not point at docs/runbook.md#<section>")
        elif link.group(1) not in runbook.slugs:
            problems.append(f"{name}: runbook_url anchor #{link.group(1)} is not a heading of the runbook")
        elif name in table and table[name][1] and table[name][1].group(1) != link.group(1):
            section = table[name][1].group(1)
            problems.append(f"{name}: runbook_url #{link.group(1)}, the runbook's table says #{section}")
        severity = (rule.get("labels") or {}).get("severity")
        if name in table and severity != table[name][0]:
            problems.append(f"{name}: severity {severity!r} in alerts.yml, {table[name][0]!r} in the runbook")
    defined = {r["alert"] for r in rules}
    named = set(re.findall(r"\bElevenLabsAgent[A-Z]\w*", runbook_text))
    problems += [f"{name}: named in the runbook, not defined in alerts.yml" for name in sorted(named - defined)]
    assert not problems, "\n".join(problems)
