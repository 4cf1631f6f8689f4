"""`elevenlabs-agent serve` as a real subprocess on a loopback port, for the tests that need a process
boundary: signals, crashes (SIGKILL), restarts, several instances sharing one Redis.

One implementation for tests/test_lifecycle.py, tests/test_cli.py, tests/test_faults.py and
tests/test_multi_instance.py. Waiting is async (`start`, `wait_exit`) for tests whose loopback fakes
run in the test's own event loop (a blocking wait would stall the fake while the service calls it),
and blocking (`start_blocking`, `wait`) for tests that have no event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from elevenlabs_agent.redis.server import free_port
from tests.helpers import BROWSER_IDENTITY, clean_env

ENTRY_POINT = Path(sys.executable).parent / "elevenlabs-agent"
MODULE_SERVE = [sys.executable, "-m", "elevenlabs_agent", "serve"]
_log_numbers = itertools.count(1)


class ServeProcess:
    """One `serve` process. Its output (JSON log lines) goes to a file in `tmp`, or with `piped` to a
    pipe this test reads (and can stop reading, as a stalled log shipper would: set `reading`).

    Variables in `env` override the defaults: loopback host, the given (or a free) port, the feature
    flag on, `ELEVENLABS_AGENT_URL` pointing at this process, and 127.0.0.1 as allowed session host.
    A new process on the same port (a restart) is a new `ServeProcess(..., port=old.port)`.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        port: int | None = None,
        piped: bool = False,
        argv: list[str] | None = None,
        **env: str,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"serve-{self.port}-{next(_log_numbers)}.log"
        self.piped = piped
        self.captured = bytearray()
        self.reading = True
        self._pump: asyncio.Task[None] | None = None
        self.argv = argv or MODULE_SERVE
        defaults = {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "ELEVENLABS_AGENT_ENABLED": "true",
            "ELEVENLABS_AGENT_URL": self.url,
            "SESSION_URL_HOSTS": "127.0.0.1",
            # Per port: a restart on the same port (a new ServeProcess) finds what its predecessor spooled.
            "CALLBACK_SPOOL_DIR": str(tmp / f"spool-{self.port}"),
        }
        self.env = clean_env(**{**defaults, **env})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.process is not None, "not started"
        return self.process

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        if self.piped:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            assert self.process.stdout is not None
            os.set_blocking(self.process.stdout.fileno(), False)
            return
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    async def start(self, timeout: float = 30.0, path: str = "/health") -> dict[str, Any]:
        """Start the process and wait until `path` answers 200 (/health: whatever Redis does; /ready:
        Redis answers too). Returns the body of that answer."""
        self.spawn()
        if self.piped:
            self._pump = asyncio.create_task(self._read_pipe())
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(headers=BROWSER_IDENTITY, base_url=self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}:\n{self.output()}"
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(path)
                    if response.status_code == 200:
                        body: dict[str, Any] = response.json()
                        return body
                await asyncio.sleep(0.05)
        raise AssertionError(f"{path} did not answer 200 within {timeout} s:\n{self.output()}")

    def start_blocking(self, timeout: float = 30.0) -> dict[str, Any]:
        """`start` for tests without an event loop (file output only)."""
        assert not self.piped
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}:\n{self.output()}"
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{self.url}/health", timeout=1)
                if response.status_code == 200:
                    body: dict[str, Any] = response.json()
                    return body
            time.sleep(0.1)
        raise AssertionError(f"/health did not answer 200 within {timeout} s:\n{self.output()}")

    async def _read_pipe(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        for _ in range(1_000_000):
            if self.reading:
                try:
                    while chunk := os.read(fd, 65536):
                        self.captured += chunk
                    return  # end of file: the process is gone
                except BlockingIOError:
                    pass
            await asyncio.sleep(0.01)

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if the process still runs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.proc.poll()

    def wait(self, timeout: float) -> int:
        """Blocking wait for the exit code (raises subprocess.TimeoutExpired)."""
        return self.proc.wait(timeout)

    def output(self) -> str:
        if self.piped:
            return self.captured.decode(errors="replace")
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far; every line must be one JSON object with an `event`."""
        records = []
        for line in self.output().splitlines():
            if line.strip():
                record = orjson.loads(line)
                assert isinstance(record, dict) and record.get("event"), line
                records.append(record)
        return records

    def kill(self) -> None:
        """SIGKILL (a crash, or the end of a test) and reap the process."""
        if self._pump is not None:
            self._pump.cancel()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class ServeProcesses:
    """The processes one test started: `new()` makes one (not started yet); `kill_all()` at the end."""

    def __init__(self, tmp: Path, **defaults: str) -> None:
        self.tmp = tmp
        self.defaults = defaults
        self.started: list[ServeProcess] = []

    def new(
        self, *, port: int | None = None, piped: bool = False, argv: list[str] | None = None, **env: str
    ) -> ServeProcess:
        service = ServeProcess(self.tmp, port=port, piped=piped, argv=argv, **{**self.defaults, **env})
        self.started.append(service)
        return service

    def kill_all(self) -> None:
        for service in self.started:
            service.kill()


async def wait_status(client: httpx.AsyncClient, path: str, status: int, timeout: float) -> float:
    """Poll GET `path` until it answers `status`; return the seconds it took."""
    began = time.monotonic()
    last: Any = None
    while time.monotonic() - began < timeout:
        try:
            response = await client.get(path)
            last = (response.status_code, response.text[:300])
            if response.status_code == status:
                return time.monotonic() - began
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} did not answer {status} within {timeout} s; last: {last}")
