"""HTTP benchmark: the service's hot paths under wrk, against baselines measured in the same run.

    .venv/bin/python bench/load.py [--duration 8] [--connections 50] [--target URL --redis-url URL]

Without --target it starts everything itself on loopback: a redis-server (AOF on, temp dir), a fast
fake cursor-runner (accepts, never calls back), and `elevenlabs-agent serve` at LOG_LEVEL=warning.
Scenarios: GET /health, POST /agent-tools (original body shape), POST /callback (cursor-runner's
body, each request completes a different pre-seeded task). Baselines: a bare ASGI app on the same
uvicorn stack, and redis-benchmark PING (the Redis ceiling, divided by the round trips a request
makes). Prints a table and writes bench/results/load-<time>.json. Loopback only; bounded by
--duration per scenario.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from elevenlabs_agent.redis_server import RedisServer, free_port  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from common import machine, pipe_into_redis, resp, write_results  # noqa: E402

WRK = ROOT / "bench" / "wrk"
WEBHOOK_SECRET = "bench-webhook-secret"
TASK_SECRET = "bench-task-secret"
# Round trips to Redis per request on each path (tests/test_redis_usage.py asserts these).
ROUND_TRIPS = {"/agent-tools": 2, "/callback": 3}


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def proc_figures(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = next(
        int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return cpu, rss


def run_wrk(wrk: str, url: str, script: str | None, args: argparse.Namespace, pid: int | None) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        if script:
            f.write((WRK / "threads.lua").read_text())
            f.write((WRK / script).read_text())
        f.write((WRK / "report.lua").read_text())
    env = {**os.environ, "BENCH_WEBHOOK_SECRET": WEBHOOK_SECRET, "BENCH_TASK_SECRET": TASK_SECRET}
    before = proc_figures(pid) if pid else (0.0, 0)
    out = subprocess.run(
        [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "-s", f.name, url],
        capture_output=True,
        text=True,
        env=env,
        timeout=args.duration + 60,
    ).stdout
    os.unlink(f.name)
    after = proc_figures(pid) if pid else (0.0, 0)
    match = re.search(r"^BENCH (\{.*\})$", out, re.M)
    if match is None:
        raise SystemExit(f"wrk printed no figures:\n{out}")
    figures = json.loads(match.group(1))
    figures["rps"] = round(figures["requests"] / figures["seconds"])
    if pid:
        figures["cpu_percent"] = round((after[0] - before[0]) / figures["seconds"] * 100)
        figures["rss_mb"] = round(after[1] / 1e6, 1)
    return figures


def seed_tasks(port: int, threads: int, per_thread: int) -> None:
    """Pending tasks bench-<thread>-<n>, each accepting TASK_SECRET."""
    token_hash = hashlib.sha256(TASK_SECRET.encode()).hexdigest()

    def commands() -> Iterator[bytes]:
        for t in range(threads):
            for n in range(1, per_thread + 1):
                key = f"cursor_task:bench-{t}-{n}"
                yield resp(
                    "HSET",
                    key,
                    "taskId",
                    f"bench-{t}-{n}",
                    "conversationId",
                    f"conv-cb-{t}-{n}",
                    "toolName",
                    "code_task",
                    "toolArgs",
                    "{}",
                    "prompt",
                    "p",
                    "status",
                    "pending",
                    "createdAt",
                    "2026-01-01T00:00:00.000Z",
                    "tokenHash",
                    token_hash,
                )
                yield resp("EXPIRE", key, "86400")

    pipe_into_redis(port, commands())


def redis_ping_rps(port: int, connections: int) -> int:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "ping", "-n", "200000", "-c", str(connections), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return int(float(re.findall(r"([\d.]+) requests per second", out)[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", help="base URL of a running service (default: start one)")
    parser.add_argument("--redis-url", help="its Redis, for seeding /callback tasks (with --target)")
    args = parser.parse_args()
    wrk = ensure_wrk()
    procs: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.TemporaryDirectory(prefix="http-bench-")
    redis_server = None
    try:
        if args.target:
            target, service_pid = args.target.rstrip("/"), None
            if not args.redis_url:
                raise SystemExit("--target needs --redis-url to seed callback tasks")
            redis_port = int(args.redis_url.rsplit(":", 1)[1].split("/")[0])
        else:
            redis_server = RedisServer(Path(tmp.name) / "redis")
            redis_server.start()
            redis_port = redis_server.port
            runner_port, service_port = free_port(), free_port()
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "fake_runner:app",
                        "--app-dir",
                        str(ROOT / "bench"),
                        "--port",
                        str(runner_port),
                        "--log-level",
                        "warning",
                        "--no-access-log",
                    ]
                )
            )
            env = {
                **os.environ,
                "PORT": str(service_port),
                "HOST": "127.0.0.1",
                "REDIS_URL": redis_server.url,
                "ELEVENLABS_AGENT_ENABLED": "true",
                "WEBHOOK_SECRET": WEBHOOK_SECRET,
                "LOG_LEVEL": "warning",
                "CURSOR_RUNNER_URL": f"http://127.0.0.1:{runner_port}",
                "ELEVENLABS_AGENT_URL": f"http://127.0.0.1:{service_port}",
                "HOUSEKEEPING_INTERVAL_SECONDS": "3600",
            }
            service = subprocess.Popen(
                [sys.executable, "-m", "elevenlabs_agent", "serve"], env=env, stdout=subprocess.DEVNULL
            )
            procs.append(service)
            target, service_pid = f"http://127.0.0.1:{service_port}", service.pid
            wait_http(f"http://127.0.0.1:{runner_port}/")
        wait_http(target + "/health")
        seed_tasks(redis_port, args.threads, 400_000 // args.threads)

        bare_port = free_port()
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare_asgi:app",
                "--app-dir",
                str(ROOT / "bench"),
                "--port",
                str(bare_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
        )
        procs.append(bare)
        wait_http(f"http://127.0.0.1:{bare_port}/")

        runs = {
            "bare ASGI (uvicorn ceiling)": run_wrk(wrk, f"http://127.0.0.1:{bare_port}/", None, args, bare.pid),
            "GET /health": run_wrk(wrk, target + "/health", None, args, service_pid),
            "POST /agent-tools": run_wrk(wrk, target, "agent_tools.lua", args, service_pid),
            "POST /callback": run_wrk(wrk, target, "callback.lua", args, service_pid),
        }
        ping = redis_ping_rps(redis_port, args.connections)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if redis_server is not None:
            redis_server.stop()
        tmp.cleanup()

    ceiling = runs["bare ASGI (uvicorn ceiling)"]["rps"]
    for name, figures in runs.items():
        figures["vs_bare_asgi"] = round(figures["rps"] / ceiling, 3)
        route = name.split()[-1]
        if route in ROUND_TRIPS:
            figures["vs_redis_ceiling"] = round(figures["rps"] / (ping / ROUND_TRIPS[route]), 3)
    report = {
        "benchmark": "http",
        "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration}s",
        "redis_ping_rps": ping,
        "runs": runs,
        "machine": machine(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    cols = [
        "rps",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "errors",
        "non2xx",
        "cpu_percent",
        "rss_mb",
        "vs_bare_asgi",
        "vs_redis_ceiling",
    ]
    print(f"{'scenario':<30}" + "".join(f"{c:>17}" for c in cols))
    for name, figures in runs.items():
        print(f"{name:<30}" + "".join(f"{figures.get(c, ''):>17}" for c in cols))
    print(f"redis-benchmark PING: {ping} req/s")
    out = write_results("load", report)
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
