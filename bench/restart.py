"""Restart under steady load with a day's worth of tasks in Redis (issue 16): does start-up stall?

    .venv/bin/python bench/restart.py [--tasks 200000] [--rate 300] [--before 10] [--after 30]
                                      [--repo /path/to/checkout] [--rounds 1]

Starts Redis (appendfsync always), the fake cursor-runner and `serve` (bench/stack.py pieces; with
--repo, `serve` runs from that checkout with its own .venv, so one script measures two commits). Seeds
--tasks tasks as housekeeping finds them after a day: created over the last 24 h, mostly completed
(recorded and delivered), some failed, a few cut short between callback and recording (--unrecorded:
housekeeping's repair), the rest pending (awaiting callbacks, among them the ones the load completes),
spread over --conversations conversations with their messages, indexes (--unindexed of them missing
from the secondary ones: the index backfill) and outbox streams, a share of them with results still
waiting for a channel (housekeeping's re-push scan).

Then a fixed-rate open-loop load runs in its own process (the mix of bench/rate.py: 45% tool calls,
45% callbacks completing pre-seeded tasks, 10% /health; latency from each request's scheduled time),
and a probe process sends GET to an unknown path (a 404 that touches no Redis; BROWSER_AUTH=none on
loopback) every 5 ms on its own connection: its worst latency is the longest event-loop stall seen.
After --before seconds, `serve` gets SIGTERM (drain, exit) and is started again; /ready is polled
every 10 ms. Printed per second from the first second the new process is ready: requests, errors,
p50/p99/max; plus time to ready, the longest probe latency after ready, and every housekeeping pass
(its own duration gauge, read from /metrics each second; a first pass still running when the load
ends is waited for, --pass-wait s at most). Loopback only; every process is bounded in time and killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import signal
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
sys.path.insert(0, str(ROOT / "bench"))
from common import machine, pipe_into_redis, resp, write_results  # noqa: E402
from httpc import ERRORS, Conn, conn_pool, cpu_percent, install_uvloop, open_loop, percentiles  # noqa: E402
from rate import CONVERSATIONS, callback_count, callback_task, send_request  # noqa: E402
from stack import TASK_SECRET, WEBHOOK_SECRET, free_port, service_env, uvicorn_app, wait_http  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
from elevenlabs_agent.redis.server import RedisServer  # noqa: E402

DAY = 86_400
PROBE_PATH = "/bench-restart-probe"  # unknown: a JSON 404 from the router, no Redis involved


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- seeding -------------------------------------------------------------------------------------------


def seed(port: int, args: argparse.Namespace, run: str, load_tasks: int) -> dict[str, int]:
    """A day of tasks, conversations and outboxes (see the module docstring). Returns what it wrote."""
    rnd = random.Random(16)
    now = time.time()
    token_hash = hashlib.sha256(TASK_SECRET.encode()).hexdigest()
    counts = {"completed": 0, "failed": 0, "pending": 0, "unrecorded": 0, "waiting_conversations": 0}

    def task(task_id: str, conversation: str, created: float, status: str, *, recorded: bool = True) -> Iterator[bytes]:
        fields = {
            "taskId": task_id,
            "conversationId": conversation,
            "toolName": "code_task",
            "toolArgs": '{"prompt":"Add a health check"}',
            "prompt": "Add a health check",
            "status": status,
            "createdAt": iso(created),
            "updatedAt": iso(created),
            "tokenHash": token_hash,
        }
        if status != "pending":
            done = iso(min(now - 60, created + 60))
            fields |= {"callbackAt": done, "completedAt": done, "summary": "Done.", "delivery": "pending"}
            fields["result"] = '{"output":"done","exitCode":0}' if status == "completed" else '{"error":"boom"}'
            if recorded:
                fields |= {"recordedAt": done, "delivery": "delivered", "deliveredAt": done, "deliveredVia": "relay"}
        key = f"cursor_task:{task_id}"
        yield resp("HSET", key, *(x for kv in fields.items() for x in kv))
        yield resp("EXPIRE", key, str(max(60, int(DAY - (now - created)))))

    def commands() -> Iterator[bytes]:
        # The load's callbacks complete these, in order; created in the last minutes.
        for n in range(load_tasks):
            task_id = callback_task(run, n)
            yield from task(task_id, f"{run}-conv-{n % CONVERSATIONS}", now - rnd.uniform(0, 600), "pending")
        counts["pending"] += load_tasks
        conversations = [f"day-conv-{k}" for k in range(args.conversations)]
        for k, conversation in enumerate(conversations):
            created = now - rnd.uniform(60, DAY)
            fields = {"conversationId": conversation, "createdAt": iso(created), "lastAccessedAt": iso(created + 30)}
            fields |= {"agentId": "agent_bench", "metadata": "{}", "seq": "2"}
            fields["msg:000001"] = '{"role":"user","content":"Add a health check","source":"text"}'
            fields["msg:000002"] = '{"role":"tool","content":"Done.","source":"tool_output","status":"completed"}'
            key = f"elevenlabs:conversation:{conversation}"
            yield resp("HSET", key, *(x for kv in fields.items() for x in kv))
            ms = str(int(created * 1000))
            yield resp("ZADD", "elevenlabs:conversations", ms, conversation)
            if k >= args.unindexed:
                yield resp(
                    "ZADD", "elevenlabs:conversations:by-last-accessed", str(int(created * 1000) + 30_000), conversation
                )
                yield resp("ZADD", "elevenlabs:conversations:by-message-count", "2", conversation)
            stream, pending = f"elevenlabs:events:{{{conversation}}}", f"elevenlabs:pending:{{{conversation}}}"
            event_id = f"{ms}-0"
            data = f'{{"type":"task_update","conversationId":"{conversation}","status":"completed","text":"Done."}}'
            yield resp("XADD", stream, event_id, "taskId", f"day-{k}", "data", data)
            yield resp("EXPIRE", stream, str(DAY))
            if rnd.random() < args.waiting_share:  # no channel ever confirmed it: still waiting
                yield resp("HSET", pending, f"day-{k}", f'{{"eventId":"{event_id}",' + data[1:])
                yield resp("EXPIRE", pending, str(DAY))
                counts["waiting_conversations"] += 1
        day_tasks = max(0, args.tasks - load_tasks)
        for i in range(day_tasks):
            created = now - rnd.uniform(60, DAY - 120)
            conversation = conversations[i % len(conversations)]
            if i < args.unrecorded:
                status, recorded = "completed", False
                counts["unrecorded"] += 1
            else:
                r = rnd.random()
                status = "completed" if r < 0.9 else "failed" if r < 0.95 else "pending"
                recorded = True
                counts[status] += 1
            yield from task(f"day-t{i}", conversation, created, status, recorded=recorded)

    started = time.monotonic()
    # Loading is set-up, not the measurement: fsync once at the end instead of after every read.
    subprocess.run(
        ["redis-cli", "-p", str(port), "config", "set", "appendfsync", "no"], check=True, capture_output=True
    )
    pipe_into_redis(port, commands())
    subprocess.run(
        ["redis-cli", "-p", str(port), "config", "set", "appendfsync", "always"], check=True, capture_output=True
    )
    counts["seconds"] = round(time.monotonic() - started, 1)
    return counts


# --- client processes (load and probe) -----------------------------------------------------------------


async def load_client(args: argparse.Namespace) -> dict[str, Any]:
    """rate.py's mix at a fixed rate; every request's (scheduled wall time, latency, ok) to --out."""
    headers = ({"X-Webhook-Secret": WEBHOOK_SECRET}, {"X-Cursor-Runner-Secret": TASK_SECRET})
    pool = conn_pool(args.target, args.connections)
    records: list[tuple[float, float, bool]] = []
    wall0 = time.time() - time.monotonic()

    async def send(conn: Conn, i: int, due: float) -> None:
        try:
            _, status, reply, expected = await send_request(conn, args.run, "mixed", i, headers)
            ok = status == 200 and expected in reply
        except ERRORS:
            ok = False
        finally:
            pool.put_nowait(conn)
        records.append((wall0 + due, time.monotonic() - due, ok))

    cpu0, mono0 = time.process_time(), time.monotonic()
    summary: dict[str, Any] = {"failed": None}
    try:
        async with asyncio.timeout(args.duration + 30):
            summary["max_lag_ms"] = round(
                await open_loop(args.rate, int(args.rate * args.duration), pool, send) * 1000, 1
            )
    except TimeoutError:
        summary["failed"] = "hard deadline hit"
    summary["client_cpu_percent"] = cpu_percent(cpu0, mono0)
    return {"records": records, **summary}


async def probe_client(args: argparse.Namespace) -> dict[str, Any]:
    """GET PROBE_PATH every 5 ms (closed loop, one connection): (sent wall time, latency, ok)."""
    conn = Conn(args.target, timeout=30)
    records: list[tuple[float, float, bool]] = []
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline:
        sent, t0 = time.time(), time.monotonic()
        try:
            status, _ = await conn.request("GET", PROBE_PATH)
            ok = status == 404
        except ERRORS:
            ok = False
        records.append((sent, time.monotonic() - t0, ok))
        await asyncio.sleep(0.005 if ok else 0.02)
    return {"records": records}


# --- the run -----------------------------------------------------------------------------------------------


def metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


class Service:
    """`serve` from --repo (or this checkout), restartable on the same port."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], log: Path) -> None:
        repo = Path(args.repo).resolve() if args.repo else ROOT
        self.python = str(repo / ".venv" / "bin" / "python") if args.repo else sys.executable
        self.repo, self.env, self.log = repo, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.python, "-m", "elevenlabs_agent", "serve"],
                cwd=self.repo,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return time.time()

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_ready(target: str, timeout: float = 60) -> float:
    """Poll /ready every 10 ms: the wall time of its first 200."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(target + "/ready").status_code == 200:
                    return time.time()
            time.sleep(0.01)
    raise SystemExit("the service did not become ready")


def watch_passes(target: str, until: float, passes: list[dict[str, float]]) -> None:
    """Read /metrics every second until `until` (wall time); each new housekeeping pass stamp: when it
    ended and how long it took."""
    seen = passes[-1]["ended"] if passes else None
    with httpx.Client(timeout=5) as client:
        while time.time() < until:
            with contextlib.suppress(httpx.HTTPError):
                text = client.get(target + "/metrics").text
                stamp = metric(text, "elevenlabs_agent_keyspace_scan_timestamp_seconds")
                duration = metric(text, "elevenlabs_agent_keyspace_scan_duration_seconds")
                if stamp and stamp != seen and duration is not None:
                    seen = stamp
                    passes.append({"ended": stamp, "seconds": round(duration, 3)})
            time.sleep(1)


def per_second(records: list[list[Any]], ready: float, seconds: int) -> list[dict[str, Any]]:
    buckets: list[list[tuple[float, bool]]] = [[] for _ in range(seconds)]
    for due, latency, ok in records:
        k = int(due - ready) if due >= ready else -1
        if 0 <= k < seconds:
            buckets[k].append((latency, ok))
    out = []
    for k, bucket in enumerate(buckets):
        latencies = [latency for latency, _ in bucket]
        row: dict[str, Any] = {"s": k, "requests": len(bucket), "errors": sum(not ok for _, ok in bucket)}
        row |= {key: value for key, value in percentiles(latencies).items() if key != "p999_ms"}
        row["max_ms"] = round(max(latencies, default=0) * 1000, 1)
        out.append(row)
    return out


def one_round(args: argparse.Namespace, tmp: Path, label: str) -> dict[str, Any]:
    redis_server = RedisServer(tmp / "redis", appendfsync="always")
    redis_server.start()
    runner_port, service_port = free_port(), free_port()
    target = f"http://127.0.0.1:{service_port}"
    extra = {"housekeeping_interval_seconds": args.housekeeping_interval, "drain_seconds": args.drain}
    if args.max_keys:  # --max-keys 1: housekeeping reads next to nothing, the machine's own noise floor
        extra["housekeeping_max_keys"] = args.max_keys
    # Loopback: the probe's unknown path answers 404 instead of asking for the proxy's identity.
    extra["browser_auth"] = "none"
    env = service_env(target, service_port, redis_server.url, f"http://127.0.0.1:{runner_port}", tmp / "spool", **extra)
    service = Service(args, env, tmp / "service.log")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(uvicorn_app("fake_runner:app", runner_port))
        run = f"restart{os.getpid()}"
        total = args.before + args.restart_budget + args.after
        counts = seed(redis_server.port, args, run, callback_count(args.rate, total))
        print(f"[{label}] seeded in {counts['seconds']} s: {counts}", flush=True)
        wait_http(f"http://127.0.0.1:{runner_port}/")
        service.start()
        wait_ready(target)
        first: list[dict[str, float]] = []
        # Let the first process finish its own start-up pass before the load begins.
        deadline = time.time() + 120
        while not first and time.time() < deadline:
            watch_passes(target, time.time() + 1.5, first)
        files = {name: tmp / f"{name}.json" for name in ("load", "probe")}
        me = [sys.executable, str(Path(__file__).resolve())]
        common = ["--target", target, "--duration", str(total)]
        load = subprocess.Popen(
            [*me, "--client", "load", *common, "--out", str(files["load"]), "--run", run, "--rate", str(args.rate)],
            stdout=subprocess.PIPE,
        )
        probe = subprocess.Popen(
            [*me, "--client", "probe", *common, "--out", str(files["probe"])], stdout=subprocess.PIPE
        )
        procs += [load, probe]
        for proc in (load, probe):  # started: their imports take seconds on a busy machine
            assert proc.stdout is not None
            proc.stdout.readline()
        time.sleep(args.before)
        stopped = time.time()
        service.stop()
        exited = time.time()
        started = service.start()
        ready = wait_ready(target)
        passes: list[dict[str, float]] = []
        watch_passes(target, ready + args.after, passes)
        for proc in (load, probe):
            proc.wait(total + 90)
        # A first pass still running when the load ends: its end and duration, without load.
        deadline = time.time() + args.pass_wait
        while not passes and time.time() < deadline:
            watch_passes(target, time.time() + 1.5, passes)
        load_out = json.loads(files["load"].read_text())
        probe_out = json.loads(files["probe"].read_text())
    finally:
        service.stop()
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        redis_server.stop()
    after = [r for r in probe_out["records"] if ready <= r[0] < ready + args.after and r[2]]
    before = [r for r in probe_out["records"] if r[0] < stopped and r[2]]
    return {
        "label": label,
        "repo": str(service.repo),
        "seeded": counts,
        "stop_seconds": round(exited - stopped, 2),
        "time_to_ready_s": round(ready - started, 3),
        "per_second": per_second(load_out["records"], ready, int(args.after)),
        "before_restart": per_second(load_out["records"], stopped - args.before + 2, int(args.before) - 2),
        "longest_stall_ms_after_ready": round(max((r[1] for r in after), default=0) * 1000, 1),
        "longest_stall_ms_before_restart": round(max((r[1] for r in before), default=0) * 1000, 1),
        "housekeeping_passes": [{"ended_s_after_ready": round(p["ended"] - ready, 1), **p} for p in passes],
        "client": {k: v for k, v in load_out.items() if k != "records"},
    }


def show(result: dict[str, Any]) -> None:
    print(f"\n[{result['label']}] {result['repo']}")
    print(f"  stop (drain+exit) {result['stop_seconds']} s, time to ready {result['time_to_ready_s']} s")
    print(f"  longest stall (404 probe): before restart {result['longest_stall_ms_before_restart']} ms,")
    print(f"    after ready {result['longest_stall_ms_after_ready']} ms")
    for p in result["housekeeping_passes"]:
        print(f"  housekeeping pass ended {p['ended_s_after_ready']} s after ready, took {p['seconds']} s")
    if not result["housekeeping_passes"]:
        print("  no housekeeping pass ended in the time given")
    p99s = sorted(r["p99_ms"] for r in result["per_second"] if r["p99_ms"] is not None)
    if p99s:
        over = sum(p > 50 for p in p99s)
        print(f"  per-second p99 after ready: median {p99s[len(p99s) // 2]} ms, worst {p99s[-1]} ms,")
        print(f"    {over} of {len(p99s)} seconds above 50 ms")
    steady = result["before_restart"]
    worst = max((r["p99_ms"] or 0 for r in steady), default=0)
    print(f"  before the restart: worst per-second p99 {worst} ms over {len(steady)} s")
    print(f"  {'s':>3} {'req':>6} {'err':>5} {'p50_ms':>8} {'p99_ms':>8} {'max_ms':>8}")
    for r in result["per_second"]:
        print(
            f"  {r['s']:>3} {r['requests']:>6} {r['errors']:>5} {r['p50_ms']!s:>8} {r['p99_ms']!s:>8} {r['max_ms']:>8}"
        )
    print(f"  client: {result['client']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--unrecorded", type=int, default=50, help="tasks cut short before recording")
    parser.add_argument("--unindexed", type=int, default=0, help="conversations missing from secondary indexes")
    parser.add_argument("--waiting-share", type=float, default=0.3, help="conversations with a result waiting")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second (fixed)")
    parser.add_argument("--before", type=float, default=10.0, help="seconds of load before the restart")
    parser.add_argument("--after", type=float, default=30.0, help="seconds measured after ready")
    parser.add_argument("--restart-budget", type=float, default=20.0, help="load seconds allowed for the restart")
    parser.add_argument("--drain", type=float, default=1.0, help="DRAIN_SECONDS of the service")
    parser.add_argument("--housekeeping-interval", type=float, default=30.0)
    parser.add_argument("--max-keys", type=int, help="HOUSEKEEPING_MAX_KEYS of the service (default: its own)")
    parser.add_argument(
        "--pass-wait", type=float, default=120.0, help="seconds to wait for a first pass after the load"
    )
    parser.add_argument("--repo", action="append", help="checkout(s) with a .venv to run serve from")
    parser.add_argument("--rounds", type=int, default=1, help="alternate over --repo this many times")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--client", choices=["load", "probe"], help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        install_uvloop()
        print("started", flush=True)
        out = asyncio.run(load_client(args) if args.client == "load" else probe_client(args))
        Path(args.out).write_text(json.dumps(out))
        return
    results = []
    repos = args.repo or [None]
    for n in range(args.rounds):
        for repo in repos:
            round_args = argparse.Namespace(**{**vars(args), "repo": repo})
            label = f"round {n + 1}: {Path(repo).name if repo else 'this checkout'}"
            label += f", HOUSEKEEPING_MAX_KEYS={args.max_keys}" if args.max_keys else ""
            with tempfile.TemporaryDirectory(prefix="restart-bench-") as tmp:
                result = one_round(round_args, Path(tmp), label)
            show(result)
            results.append(result)
    report = {"benchmark": "restart", "args": {k: v for k, v in vars(args).items() if v is not None}}
    report |= {"results": results, "machine": machine(), "time": datetime.now(UTC).isoformat(timespec="seconds")}
    print(f"written: {write_results('restart', report).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
