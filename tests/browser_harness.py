"""The real-browser relay stack: Debian's Chromium (driven by Playwright for Python, no browser
download) holding a session of the official ElevenLabs SDK, the service as a `serve` subprocess, and
loopback stand-ins for ElevenLabs and cursor-runner. Used by tests/test_browser_relay.py and
bench/browser_relay.py.

What runs where, all on 127.0.0.1:
- the page (`tests/browser/page/`) and the SDK, bundled with esbuild from `tests/browser/node_modules`
  (`npm ci` in scripts/bootstrap), served by a small static server: the page's origin;
- the service (`elevenlabs-agent serve`), another origin, allowed by CORS_ALLOW_ORIGINS; the page
  loads `relay.js` from it;
- `FakeElevenLabs` with `require_initiation` and pings: the SDK's conversation socket, and the
  signed-URL API that `/signed-url` calls (ELEVENLABS_API_URL);
- `FakeCursorRunner` takes the dispatches; the test sends each callback itself, as cursor-runner
  would, so that it knows when the callback left.
Chromium resolves no host name (`--host-resolver-rules`), and background networking is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import redis.asyncio as aioredis
from playwright.async_api import Browser, Page, Playwright, async_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner, callback_body, split_secret
from elevenlabs_agent.sim.elevenlabs import FakeElevenLabs, SimConversation
from elevenlabs_agent.sim.server import LocalServer
from elevenlabs_agent.sim.stack import as_env, neighbours
from elevenlabs_agent.stores.outbox import pending_key
from tests.serve_proc import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
PAGE_DIR = BROWSER_DIR / "page"
ESBUILD = BROWSER_DIR / "node_modules" / ".bin" / "esbuild"
SDK_PACKAGE = BROWSER_DIR / "node_modules" / "@elevenlabs" / "client" / "package.json"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
AGENT_ID = "agent_browser"
CHROMIUM_ARGS = [
    "--no-sandbox",  # the suite runs as root
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-quic",
    "--metrics-recording-only",
    # Nothing resolves but 127.0.0.1 (IP literals go through the rules too): no other host is reachable.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--use-fake-device-for-media-stream",  # a generated microphone (a beep), no sound card
    "--autoplay-policy=no-user-gesture-required",  # the SDK's AudioContext starts without a click
]
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


class MissingBrowserTools(RuntimeError):
    """Chromium or the npm packages are not installed: scripts/bootstrap --test installs them."""


def sdk_version() -> str:
    version: str = json.loads(SDK_PACKAGE.read_text())["version"]
    return version


def build_page(out: Path) -> Path:
    """The page's files and the SDK bundle (esbuild, the package's `browser` export) in `out`."""
    if not ESBUILD.exists() or not SDK_PACKAGE.exists():
        raise MissingBrowserTools(f"{BROWSER_DIR}/node_modules is missing: run scripts/bootstrap --test (npm ci)")
    if not Path(CHROMIUM).exists():
        raise MissingBrowserTools(f"{CHROMIUM} is missing: run scripts/bootstrap --test (Debian's chromium)")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "app.js"):
        shutil.copyfile(PAGE_DIR / name, out / name)
    subprocess.run(
        [
            str(ESBUILD),
            str(PAGE_DIR / "sdk.js"),
            "--bundle",
            "--format=esm",
            "--platform=browser",
            "--target=chrome120",
            "--log-level=warning",
            f"--outfile={out / 'sdk.bundle.js'}",
        ],
        check=True,
        cwd=BROWSER_DIR,
        timeout=60,
    )
    return out


def page_app(directory: Path) -> Starlette:
    """Serves the built page (no caching: every load reads the files)."""

    async def serve(request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        path = directory / name
        if "/" in name or not path.is_file():
            return Response("not found", status_code=404)
        return Response(
            path.read_bytes(),
            media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
            headers={"Cache-Control": "no-store"},
        )

    return Starlette(routes=[Route("/", serve), Route("/{name}", serve)])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Task:
    task_id: str
    callback_url: str
    secret: str
    prompt: str


@dataclass
class BrowserStack:
    tmp: Path
    redis_url: str
    page_dir: Path
    playwright: Playwright
    browser: Browser
    elevenlabs: FakeElevenLabs
    el_server: LocalServer
    runner: FakeCursorRunner
    runner_server: LocalServer
    page_server: LocalServer
    service: ServeProcess
    http: httpx.AsyncClient
    webhook_secret: str
    browser_token: str
    env: dict[str, str]
    started: list[ServeProcess] = field(default_factory=list)  # every serve process, for the teardown
    pages: list[Page] = field(default_factory=list)
    console: list[str] = field(default_factory=list)  # what the pages logged (for failure reports)

    @property
    def page_origin(self) -> str:
        return self.page_server.url

    # the service --------------------------------------------------------------------------------------

    async def create_conversation(self) -> str:
        response = await self.http.post("/agent-conversations/api/new", json={"agentId": AGENT_ID})
        assert response.status_code == 201, response.text
        conversation_id: str = response.json()["conversationId"]
        return conversation_id

    async def restart_service(self) -> None:
        """SIGTERM the service, wait for its exit, then a new `serve` on the same port and Redis."""
        self.service.terminate()
        code = await self.service.wait_exit(30)
        assert code == 0, f"serve exited with {code}:\n{self.service.output()[-3000:]}"
        self.service = ServeProcess(self.tmp, port=self.service.port, **self.env)
        self.started.append(self.service)
        await self.service.start(path="/ready")

    async def pending(self, conversation_id: str) -> list[str]:
        """Task ids the service still offers to the relay (not acknowledged)."""
        client = aioredis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            return sorted(await client.hkeys(pending_key(conversation_id)))
        finally:
            await client.aclose()

    # ElevenLabs and cursor-runner -------------------------------------------------------------------

    async def tool_call(self, eleven_id: str, prompt: str) -> Task:
        """The agent calls the code tool (as ElevenLabs does); cursor-runner takes the task."""
        response = await self.http.post(
            "/agent-tools",
            json={"tool_name": "code_task", "conversation_id": eleven_id, "prompt": prompt},
            headers={"X-Webhook-Secret": self.webhook_secret},
        )
        assert response.status_code == 200 and response.json()["success"], response.text
        task_id = response.json()["taskId"]
        dispatched = next(d for d in self.runner.received if d["id"] == task_id)
        url, secret = split_secret(dispatched["callbackUrl"])
        assert secret is not None
        return Task(dispatched["id"], url, secret, prompt)

    async def callback(self, task: Task) -> float:
        """cursor-runner's completion callback; returns `time.perf_counter()` just before it was sent."""
        body = callback_body("completion", task.task_id, task.prompt)
        headers = {"X-Webhook-Secret": task.secret, "X-Cursor-Runner-Secret": task.secret}
        sent = time.perf_counter()
        response = await self.http.post(task.callback_url, json=body, headers=headers)
        assert response.status_code == 200 and response.json()["success"], response.text
        return sent

    def conversation(self, eleven_id: str) -> SimConversation:
        return self.elevenlabs.conversations[eleven_id]

    def updates_for(self, eleven_id: str, task_id: str) -> list[dict[str, Any]]:
        return [u for u in self.conversation(eleven_id).contextual_updates if u.get("context_id") == task_id]

    def all_updates_for(self, task_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Every contextual_update for `task_id` in any conversation: (ElevenLabs conversation id, frame)."""
        return [
            (c.conversation_id, u)
            for c in self.elevenlabs.conversations.values()
            for u in c.contextual_updates
            if u.get("context_id") == task_id
        ]

    async def wait_update(self, eleven_id: str, task_id: str, timeout: float = 15.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not (found := self.updates_for(eleven_id, task_id)):
                await asyncio.sleep(0.002)
        return found[0]

    # the page -----------------------------------------------------------------------------------------

    async def open_page(
        self,
        conversation_id: str,
        *,
        speak: bool = False,
        text_only: bool = False,
        hold: bool = False,
        nostop: bool = False,
    ) -> Page:
        """A new tab: the SDK session, its registration and the relay; returns once the relay runs
        (with `hold`: once registered, and the relay starts on `go(page)`)."""
        page = await self.browser.new_page()
        self.pages.append(page)
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        query = {
            "service": self.service.url,
            "conversation": conversation_id,
            "agent": AGENT_ID,
            "token": self.browser_token,
        }
        flags = {"speak": speak, "text": text_only, "hold": hold, "nostop": nostop}
        query.update({name: "1" for name, on in flags.items() if on})
        await page.goto(f"{self.page_origin}/?{urlencode(query)}")
        await self.wait_phase(page, "registered" if hold else "relaying")
        return page

    async def go(self, page: Page) -> None:
        """Start the relay of a page opened with `hold`."""
        await page.evaluate("window.relayTest.go()")
        await self.wait_phase(page, "relaying")

    async def wait_phase(self, page: Page, phase: str, timeout: float = 20.0) -> None:
        try:
            await page.wait_for_function(
                f"['{phase}', 'failed'].includes(window.relayTest?.phase)", timeout=timeout * 1000
            )
        finally:
            state = await self.state(page)
        assert state["phase"] == phase, f"page state {state}\nconsole: {self.console[-20:]}"

    async def state(self, page: Page) -> dict[str, Any]:
        state: dict[str, Any] = await page.evaluate(
            "() => { const {go, ...rest} = window.relayTest || {}; return rest; }"
        )
        return state

    async def eleven_id(self, page: Page) -> str:
        eleven_id: str = (await self.state(page))["elevenConversationId"]
        return eleven_id

    async def relay_connected(self, conversation_id: str, opened_before: int, timeout: float = 15.0) -> None:
        """Wait until the service logged one more SSE subscription of `conversation_id` than before."""
        async with asyncio.timeout(timeout):
            while self.sse_connections(conversation_id) <= opened_before:
                await asyncio.sleep(0.02)

    def sse_connections(self, conversation_id: str) -> int:
        return sum(
            1
            for r in self.service.records()
            if r.get("event") == "sse.connected" and r.get("conversationId") == conversation_id
        )


@contextlib.asynccontextmanager
async def browser_stack(tmp: Path, redis_url: str, **service_env: str) -> AsyncIterator[BrowserStack]:
    page_dir = build_page(tmp / "page")
    webhook_secret = "whsec-" + secrets.token_urlsafe(24)
    runner_secret = "crsec-" + secrets.token_urlsafe(24)
    api_key = "xi-" + secrets.token_urlsafe(24)
    # The browser routes need an identity: the page signs in with a token (cookie), as a front end
    # served from another origin would; the test's own client sends it as a bearer token.
    browser_token = "bt-" + secrets.token_urlsafe(24)
    elevenlabs = FakeElevenLabs(api_key=api_key, require_initiation=True, ping_interval=0.5)
    runner = FakeCursorRunner(secret=runner_secret, callback_kind="none")
    async with contextlib.AsyncExitStack() as exits:
        around = await exits.enter_async_context(neighbours(elevenlabs, runner))
        el_server, runner_server = around.elevenlabs_server, around.runner_server
        page_server = await exits.enter_async_context(LocalServer(page_app(page_dir)))
        env = {
            "REDIS_URL": redis_url,
            "WEBHOOK_SECRET": webhook_secret,
            "ELEVENLABS_AGENT_ID": AGENT_ID,
            **as_env(around.fields()),
            "CORS_ALLOW_ORIGINS": page_server.url,
            "BROWSER_AUTH": "token",
            "BROWSER_API_TOKENS": browser_token,
            "SESSION_URL_HOSTS": "127.0.0.1",  # the signed URL the page registers points at the stand-in
            "SSE_KEEPALIVE_SECONDS": "2",
            "DRAIN_SECONDS": "0.2",
            "LOG_LEVEL": "info",
            **service_env,
        }
        started = [ServeProcess(tmp, **env)]  # restart_service() adds to it

        def kill_services() -> None:
            for process in started:
                process.kill()

        exits.callback(kill_services)
        service = started[0]
        await service.start(path="/ready")
        bearer = {"Authorization": f"Bearer {browser_token}"}
        http = await exits.enter_async_context(httpx.AsyncClient(base_url=service.url, timeout=15, headers=bearer))
        playwright = await exits.enter_async_context(async_playwright())
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        exits.push_async_callback(browser.close)
        stack = BrowserStack(
            tmp=tmp,
            redis_url=redis_url,
            page_dir=page_dir,
            playwright=playwright,
            browser=browser,
            elevenlabs=elevenlabs,
            el_server=el_server,
            runner=runner,
            runner_server=runner_server,
            page_server=page_server,
            service=service,
            http=http,
            webhook_secret=webhook_secret,
            browser_token=browser_token,
            env=env,
            started=started,
        )
        yield stack
