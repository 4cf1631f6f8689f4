"""What the load benchmarks run against: the service they start themselves (or --target), its Redis,
a fast fake cursor-runner, the bare ASGI baseline; process figures from /proc; task seeding."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from elevenlabs_agent.redis.server import RedisServer, free_port  # noqa: E402
from elevenlabs_agent.settings import Settings  # noqa: E402
from elevenlabs_agent.sim.stack import LOOPBACK_HOSTS, as_env, service_fields  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from common import pipe_into_redis, resp  # noqa: E402

WEBHOOK_SECRET = "bench-webhook-secret"
TASK_SECRET = "bench-task-secret"


def add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="base URL of a running service (default: start one)")
    parser.add_argument("--redis-url", help="its Redis, for seeding callback tasks (with --target)")
    parser.add_argument("--workers", type=int, help="WORKERS for the service it starts (if the service has it)")


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn workers, if any)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def proc_figures(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, RSS bytes) of a process and its descendants (WORKERS), from /proc.
    RSS is summed over the processes, so pages they share are counted once per process."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, rss = 0.0, 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks
            status = Path(f"/proc/{p}/status").read_text().splitlines()
            rss += next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")), 0)
    return cpu, rss


def uvicorn_app(app: str, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(ROOT / "bench"), "--port", str(port)]
    return subprocess.Popen([*argv, "--log-level", "warning", "--no-access-log"])


def service_env(url: str, port: int, redis_url: str, runner_url: str, spool_dir: Path, **extra: Any) -> dict[str, str]:
    """The variables of a benchmarked `serve` at `url`: quiet, no housekeeping pass during a run;
    `extra` (Settings fields) add to them and win."""
    fields = {
        "port": port,
        "host": "127.0.0.1",
        "redis_url": redis_url,
        "webhook_secret": WEBHOOK_SECRET,
        "log_level": "warning",
        "cursor_runner_url": runner_url,
        "housekeeping_interval_seconds": 3600,
        "callback_spool_dir": str(spool_dir),
    }
    return as_env(service_fields(url, **{**fields, **extra}))


@dataclass
class Stack:
    target: str
    redis_port: int
    service: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    checkout: Path = ROOT  # the service's code, and its Python (another commit's, with bench/load.py --compare)
    python: str = sys.executable

    @property
    def service_pid(self) -> int | None:
        return self.service.pid if self.service else None

    def service_exit(self) -> int | None:
        """The exit status of the service started here, if it has exited (None while it runs)."""
        return self.service.poll() if self.service else None

    def start_bare_asgi(self) -> tuple[str, int]:
        """The bare ASGI baseline on the same uvicorn: (its URL, its pid)."""
        port = free_port()
        proc = uvicorn_app("bare_asgi:app", port)
        self.procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/")
        return f"http://127.0.0.1:{port}", proc.pid

    def seed(self, tasks: dict[str, str]) -> None:
        """Pending tasks (task id -> conversation id) written by seed_tasks of the service's own
        checkout, so that their keys have the layout of the code under test."""
        code = "import json, sys; sys.path.insert(0, 'bench'); import stack; tasks = json.load(sys.stdin); "
        code += "stack.seed_tasks(int(sys.argv[1]), iter(tasks), tasks.__getitem__)"
        argv = [self.python, "-c", code, str(self.redis_port)]
        subprocess.run(argv, input=json.dumps(tasks).encode(), cwd=self.checkout, check=True, timeout=600)

    def figures(self) -> tuple[float, int]:
        return proc_figures(self.service_pid) if self.service_pid else (0.0, 0)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running(args: argparse.Namespace, checkout: Path = ROOT, python: str = sys.executable) -> Iterator[Stack]:
    """The service under test: --target, or one started here with its own Redis and fake runner; the
    service is `python -m elevenlabs_agent serve` run in `checkout` (another commit's, with its venv)."""
    if args.target:
        if not args.redis_url:
            raise SystemExit("--target needs --redis-url to seed callback tasks")
        if args.workers:
            raise SystemExit("--workers applies only to a service started here")
        target = args.target.rstrip("/")
        wait_http(target + "/health")
        s = Stack(target, int(args.redis_url.rsplit(":", 1)[1].split("/")[0]))
        try:
            yield s
        finally:
            _stop(s.procs)
        return
    env = {}
    if args.workers:
        if "workers" not in Settings.model_fields:
            raise SystemExit("--workers: this service has no WORKERS setting (settings.py)")
        env["WORKERS"] = str(args.workers)
    tmp = tempfile.TemporaryDirectory(prefix="http-bench-")
    # Durable as the service requires (README, "Durability"): every acknowledged write is fsynced.
    redis_server = RedisServer(Path(tmp.name) / "redis", appendfsync="always")
    redis_server.start()
    runner_port, service_port = free_port(), free_port()
    service_log = Path(tmp.name) / "service.log"
    s = Stack(f"http://127.0.0.1:{service_port}", redis_server.port, checkout=checkout, python=python)
    try:
        s.procs.append(uvicorn_app("fake_runner:app", runner_port))
        runner = f"http://127.0.0.1:{runner_port}"
        # No drain on SIGTERM: nothing is in flight once a run ends, and --compare starts a stack per run.
        # bench/fanout.py registers its conversations with an ElevenLabs session URL (never dialled).
        hosts = (*LOOPBACK_HOSTS, "elevenlabs.io", "*.elevenlabs.io")
        spool = Path(tmp.name) / "spool"
        env |= service_env(
            s.target, service_port, redis_server.url, runner, spool, drain_seconds=0, session_url_hosts=hosts
        )
        inherited = {k: v for k, v in os.environ.items() if checkout == ROOT or k != "PYTHONPATH"}
        with service_log.open("wb") as log:  # LOG_LEVEL=warning: small
            s.service = subprocess.Popen(
                [python, "-m", "elevenlabs_agent", "serve"], env={**inherited, **env}, stdout=log, cwd=checkout
            )
        s.procs.append(s.service)
        wait_http(f"http://127.0.0.1:{runner_port}/")
        wait_http(s.target + "/health")
        yield s
    finally:
        if (code := s.service_exit()) is not None:
            tail = service_log.read_text(errors="replace").splitlines()[-20:]
            print(f"the service exited early ({code}); its log ends:", *tail, sep="\n", file=sys.stderr)
        _stop(s.procs)
        redis_server.stop()
        tmp.cleanup()


def seed_tasks(port: int, task_ids: Iterator[str], conversation_of: Callable[[str], str]) -> None:
    """Pending tasks with these ids, each accepting TASK_SECRET on /callback."""
    token_hash = hashlib.sha256(TASK_SECRET.encode()).hexdigest()

    def commands() -> Iterator[bytes]:
        for task_id in task_ids:
            key = f"cursor_task:{task_id}"
            fields = {
                "taskId": task_id,
                "conversationId": conversation_of(task_id),
                "toolName": "code_task",
                "toolArgs": "{}",
                "prompt": "p",
                "status": "pending",
                "createdAt": "2026-01-01T00:00:00.000Z",
                "tokenHash": token_hash,
            }
            yield resp("HSET", key, *(x for kv in fields.items() for x in kv))
            yield resp("EXPIRE", key, "86400")

    pipe_into_redis(port, commands())


def per_thread_tasks(prefix: str, threads: int, per_thread: int) -> dict[str, str]:
    """Tasks <prefix>-<thread>-<n> (n from 1), as the wrk Lua scripts name them, for Stack.seed."""
    return {f"{prefix}-{t}-{n}": f"conv-cb-{prefix}-{t}-{n}" for t in range(threads) for n in range(1, per_thread + 1)}
