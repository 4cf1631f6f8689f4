"""Local mode (`serve --local`, what `./scripts/run` starts): the service does its main job on one
machine with no configuration, and fills in only what the environment leaves unset.

- `REDIS_URL` unset: the embedded redis-server on a stable address, recorded in
  `<state dir>/redis.url` so that every CLI command finds it without `--redis-url`;
- `WEBHOOK_SECRET` unset: a secret generated once into `<state dir>/webhook-secret` (mode 0600),
  never logged (it is a configured secret, so the log redactor knows it);
- `CURSOR_RUNNER_URL` unset: the loopback cursor-runner simulator (`sim/cursor_runner.py`), which
  really POSTs a completion callback a second after each dispatch;
- `HOST` unset: 127.0.0.1 (nothing outside this machine reaches a development instance);
  `ELEVENLABS_AGENT_URL` unset: this instance's loopback URL (the simulator's callbacks go there).

The state directory is `EMBEDDED_REDIS_DIR` (`.elevenlabs-agent/`, ignored by git). With all of
REDIS_URL, WEBHOOK_SECRET and CURSOR_RUNNER_URL set, local mode changes nothing but the defaults of
HOST and ELEVENLABS_AGENT_URL. Plain `serve` (systemd, containers) never does any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import shlex
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from elevenlabs_agent import events
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.redis.server import RedisServer, free_port

log = get_logger()

REDIS_URL_FILE = "redis.url"
SECRET_FILE = "webhook-secret"
BACKUPS_DIR = "backups"
DEFAULT_STATE_DIR = ".elevenlabs-agent"
SIMULATOR_CALLBACK_DELAY = 1.0
SIMULATOR_BANNER = "simulated cursor-runner: set CURSOR_RUNNER_URL for the real one"


def state_dir() -> Path:
    """Where local mode keeps its state (the embedded Redis, the secret, backups)."""
    return Path(os.environ.get("EMBEDDED_REDIS_DIR") or DEFAULT_STATE_DIR)


def recorded_redis_url(directory: Path | None = None) -> str | None:
    """The URL of the local instance's Redis, as its last `serve --local` recorded it."""
    path = (directory or state_dir()) / REDIS_URL_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def webhook_secret(directory: Path) -> tuple[str, bool]:
    """The local webhook secret and whether it was generated just now (first run)."""
    path = directory / SECRET_FILE
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)  # someone loosened it: a secret is for its owner only
        return path.read_text().strip(), False
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret, True


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def embedded_redis(directory: Path) -> RedisServer:
    """The local Redis on the port it had last time (so the recorded URL stays valid), or on a new
    free port recorded for the next time."""
    previous = recorded_redis_url(directory)
    port: int | None = None
    if previous and previous.startswith("redis://127.0.0.1:"):
        with contextlib.suppress(ValueError):
            port = int(previous.removeprefix("redis://127.0.0.1:").split("/")[0])
    if port is None or not _port_is_free(port):
        port = free_port()
    # appendfsync always: an acknowledged callback must survive a crash (README, "Durability").
    return RedisServer(directory.resolve() / "redis", port=port, appendfsync="always")


class SimulatedCursorRunner:
    """The loopback cursor-runner, served from a thread with its own event loop (the service's loop
    belongs to uvicorn, and with WORKERS > 1 lives in other processes)."""

    def __init__(self) -> None:
        from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner
        from elevenlabs_agent.sim.server import LocalServer

        self.server = LocalServer(FakeCursorRunner(callback_delay=SIMULATOR_CALLBACK_DELAY).app())
        self.url = self.server.url
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(),), name="simulated-cursor-runner", daemon=True
        )

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.server.start()
        except Exception as exc:
            self._error = exc
            return
        finally:
            self._ready.set()
        await self._stop.wait()
        await self.server.stop()

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the simulated cursor-runner did not start: {self._error!r}")

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


def tool_call_curl(service_url: str, secret: str) -> str:
    """A ready-to-paste tool call, as ElevenLabs makes it; `secret` is a shell expression that reads
    the secret (so the command line does not show it)."""
    body = '{"tool_name":"code_task","conversation_id":"local-demo","prompt":"Add a health check endpoint"}'
    return (
        f"curl -sS {service_url}/agent-tools -H 'Content-Type: application/json' "
        f'-H "X-Webhook-Secret: {secret}" '
        f"-d '{body}'"
    )


def apply_defaults() -> None:
    """Local mode's HOST, ELEVENLABS_AGENT_URL and BROWSER_AUTH defaults (before the listening socket
    is bound)."""
    os.environ.setdefault("HOST", "127.0.0.1")
    os.environ.setdefault("ELEVENLABS_AGENT_URL", f"http://127.0.0.1:{os.environ.get('PORT') or 3004}")
    # A browser on this machine reaches the browser routes without a proxy, but only while nothing
    # outside can reach the port: on any other HOST the secure default (proxy) stays.
    if _loopback(os.environ["HOST"]):
        os.environ.setdefault("BROWSER_AUTH", "none")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@contextlib.contextmanager
def local_environment(say: Callable[[str], Any], terminal: bool) -> Iterator[None]:
    """Fill the environment for local mode (see the module docstring) for the lifetime of `serve`.
    `say` writes to stderr, never to the logs; a generated secret is shown there only when it is a
    `terminal` (not a file or a CI log that keeps it)."""
    env = os.environ
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    apply_defaults()
    service_url = f"http://127.0.0.1:{env.get('PORT') or 3004}"
    with contextlib.ExitStack() as stack:
        lines = [f"local mode: state in {directory.resolve()}/"]
        if not env.get("REDIS_URL"):
            redis = embedded_redis(directory)
            redis.start()
            stack.callback(log.info, events.EMBEDDED_REDIS_STOPPED)
            stack.callback(redis.stop)
            (directory / REDIS_URL_FILE).write_text(redis.url + "\n")
            env["REDIS_URL"] = redis.url
            log.info(events.EMBEDDED_REDIS_STARTED, port=redis.port, directory=str(redis.directory))
            lines.append(f"  Redis: {redis.url} (data in {redis.directory}; the CLI finds it: ./scripts/run stats)")
        secret_expr = "$WEBHOOK_SECRET"
        if not env.get("WEBHOOK_SECRET"):
            secret, generated = webhook_secret(directory)
            env["WEBHOOK_SECRET"] = secret
            where = directory.resolve() / SECRET_FILE
            secret_expr = f"$(cat {shlex.quote(str(where))})"
            if generated and terminal:
                lines.append(f"  webhook secret generated, shown this once: {secret}")
            lines.append(f"  webhook secret in {where} (mode 0600; send it as X-Webhook-Secret)")
        if not env.get("CURSOR_RUNNER_URL"):
            simulator = SimulatedCursorRunner()
            simulator.start()
            stack.callback(simulator.stop)
            env["CURSOR_RUNNER_URL"] = simulator.url
            lines.append(f"  {SIMULATOR_BANNER} (listening on {simulator.url})")
        lines += [
            "",
            "Try a tool call, as the ElevenLabs agent makes it:",
            "  " + tool_call_curl(service_url, secret_expr),
            "then see the task and its conversation:",
            "  ./scripts/run tasks list",
            "  ./scripts/run conversations list",
            f"  curl -sS {service_url}/agent-conversations/api/local-demo",
            "",
        ]
        say("\n".join(lines))
        yield
