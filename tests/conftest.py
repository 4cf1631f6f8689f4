"""Test fixtures: a real redis-server, loopback fakes of ElevenLabs and cursor-runner, and the real
service on a loopback port, all driven over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets
from pydantic import SecretStr

from elevenlabs_agent.redis.clients import open_redis
from elevenlabs_agent.redis.server import RedisClusterServers, RedisSentinelServer, RedisServer
from elevenlabs_agent.settings import Settings
from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner
from elevenlabs_agent.sim.elevenlabs import FakeElevenLabs
from elevenlabs_agent.sim.server import LocalServer
from elevenlabs_agent.sim.stack import service_stack
from tests.helpers import BROWSER_IDENTITY
from tests.serve_proc import ServeProcesses

AGENT_ID = "agent_test"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A local 3-master Redis Cluster (no replicas), started on first use, stopped after the session."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def cluster_redis(redis_cluster: RedisClusterServers) -> AsyncIterator[aioredis.Redis]:
    """A cluster client (typed as Redis, as the service holds it), every master emptied first."""
    client = open_redis(redis_cluster.url, decode_responses=True, socket_connect_timeout=5, socket_timeout=10)
    await client.flushall()  # a cluster client sends FLUSHALL to every master
    yield client
    await client.aclose()


@dataclass
class SentinelSetup:
    master: RedisServer
    sentinel: RedisSentinelServer

    @property
    def url(self) -> str:
        return self.sentinel.url


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A redis-server master and one redis-sentinel monitoring it (service `mymaster`)."""
    directory = tmp_path_factory.mktemp("redis-sentinel")
    master = RedisServer(directory / "master", appendonly=False)
    master.start()
    sentinel = RedisSentinelServer(directory / "sentinel", master.port)
    try:
        sentinel.start()
    except BaseException:
        master.stop()
        raise
    yield SentinelSetup(master, sentinel)
    sentinel.stop()
    master.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client on the suite's Redis, emptied before each test (restarted first if a test stopped it)."""
    if not redis_server.running:
        redis_server.start()
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


@dataclass
class Stack:
    """The service under test and its loopback neighbours."""

    settings: Settings
    service: LocalServer
    http: httpx.AsyncClient
    runner: FakeCursorRunner
    elevenlabs: FakeElevenLabs
    elevenlabs_server: LocalServer
    redis: aioredis.Redis
    webhook_secret: str
    runner_secret: str
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"X-Webhook-Secret": self.webhook_secret}

    async def create_conversation(self, **body: Any) -> str:
        response = await self.http.post("/agent-conversations/api/new", json=body)
        assert response.status_code == 201, response.text
        conversation_id: str = response.json()["conversationId"]
        return conversation_id

    async def open_voice_session(self) -> tuple[Any, str, str]:
        """Do what the browser does: get a signed URL and open the ElevenLabs conversation socket."""
        signed = (await self.http.get("/signed-url", params={"agentId": AGENT_ID})).json()["signedUrl"]
        ws = await websockets.connect(signed)
        hello = orjson.loads(await ws.recv())
        return ws, signed, hello["conversation_initiation_metadata_event"]["conversation_id"]

    async def register(
        self, conversation_id: str, eleven_id: str, *, push: bool = True, session_url: str | None = None
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "sessionUrl": session_url or f"{self.elevenlabs_server.ws_url}/v1/convai/conversation?agent_id=x",
            "transport": "websocket",
            "metadata": {"agentId": AGENT_ID, "elevenConversationId": eleven_id},
        }
        if push:
            body["pushUrl"] = f"{self.elevenlabs_server.ws_url}/push/{eleven_id}"
        return await self.http.post(f"/agent-conversations/api/{conversation_id}/session", json=body)

    async def live_conversation(self, *, push: bool = True) -> tuple[str, str, Any]:
        """A conversation with a registered live session: (our id, ElevenLabs id, voice socket)."""
        conversation_id = await self.create_conversation(agentId=AGENT_ID)
        ws, _, eleven_id = await self.open_voice_session()
        response = await self.register(conversation_id, eleven_id, push=push)
        assert response.status_code == 200, response.text
        return conversation_id, eleven_id, ws

    async def call_tool(
        self, body: dict[str, Any], headers: dict[str, str] | None = None, path: str = "/agent-tools"
    ) -> httpx.Response:
        return await self.http.post(path, json=body, headers=self.auth if headers is None else headers)

    async def start_task(self, conversation_ref: str, prompt: str = "Fix the bug") -> str:
        """A code task the service accepted and dispatched: its id."""
        response = await self.call_tool(
            {"tool_name": "code_task", "conversation_id": conversation_ref, "prompt": prompt}
        )
        assert response.status_code == 200, response.text
        assert response.json()["success"] is True, response.text
        task_id: str = response.json()["taskId"]
        return task_id

    async def deliveries_settled(self, timeout: float = 10.0) -> None:
        """Wait until every delivery the service started (after a callback, a registration, a
        housekeeping pass) has finished: pushed, failed or left waiting. Proves that a push did NOT
        happen without sleeping for a guessed time."""
        assert self.service.app is not None
        delivery = self.service.app.state.runtime.delivery
        async with asyncio.timeout(timeout):
            while delivery.inflight:
                await asyncio.sleep(0.01)

    async def housekeeping_passes(self, count: int, timeout: float = 10.0) -> None:
        """Wait until housekeeping has finished `count` more passes (each one stamps the keyspace scan
        gauge) and the deliveries they started have settled."""

        async def stamp() -> str | None:
            text = (await self.http.get("/metrics")).text
            found = re.search(r"^elevenlabs_agent_keyspace_scan_timestamp_seconds (\S+)$", text, re.M)
            return found.group(1) if found else None

        seen, passes = await stamp(), 0
        async with asyncio.timeout(timeout):
            while passes < count:
                await asyncio.sleep(0.02)
                if (now := await stamp()) != seen:
                    seen, passes = now, passes + 1
        await self.deliveries_settled()

    async def task(self, task_id: str) -> dict[str, str]:
        return await self.redis.hgetall(f"cursor_task:{task_id}")  # type: ignore[no-any-return]


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(redis: aioredis.Redis, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[StackFactory]:
    """Start a stack; keyword arguments override Settings fields (e.g. dispatch_timeout_seconds=0.5)."""
    async with contextlib.AsyncExitStack() as exits:

        async def factory(**overrides: Any) -> Stack:
            webhook_secret = "whsec-" + secrets.token_urlsafe(24)
            runner_secret = "crsec-" + secrets.token_urlsafe(24)
            api_key = "xi-" + secrets.token_urlsafe(24)
            fields: dict[str, Any] = {
                "redis_url": redis_server.url,
                "webhook_secret": SecretStr(webhook_secret),
                "elevenlabs_agent_id": AGENT_ID,
                "dispatch_timeout_seconds": 2.0,
                "push_timeout_seconds": 2.0,
                "sse_keepalive_seconds": 1.0,
                "log_level": "debug",
                # Each stack takes its own slot in it; never the repository's .elevenlabs-agent/.
                "callback_spool_dir": str(tmp_path / "spool"),
                **overrides,
            }
            wired = await exits.enter_async_context(
                service_stack(FakeElevenLabs(api_key=api_key), FakeCursorRunner(secret=runner_secret), **fields)
            )
            service, around = wired.service, wired.around
            http = await exits.enter_async_context(
                httpx.AsyncClient(base_url=service.url, timeout=15, headers=BROWSER_IDENTITY)
            )
            return Stack(
                wired.settings,
                service,
                http,
                around.runner,
                around.elevenlabs,
                around.elevenlabs_server,
                redis,
                webhook_secret,
                runner_secret,
                api_key,
            )

        yield factory


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until `check()` is true (polling); fail the test if it never becomes true."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


@pytest.fixture
def serve_procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServeProcesses]:
    """`serve` processes for one test (killed at its end); the test module's SERVE_ENV holds the
    variables they share."""
    processes = ServeProcesses(tmp_path, **getattr(request.module, "SERVE_ENV", {}))
    yield processes
    processes.kill_all()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
