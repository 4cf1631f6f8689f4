"""Callback spool end to end: callbacks sent while Redis is down (SIGKILL), then replayed.

Starts its own Redis (AOF, appendfsync always), a fake cursor-runner and `serve`; seeds N pending
tasks; kills Redis; sends N genuine callbacks (plus --forged ones with a wrong secret) with
--concurrency in flight; starts Redis again and measures how long the service takes to record every
spooled result. Prints a table and writes JSON to bench/results/.

    .venv/bin/python bench/spool_replay.py --callbacks 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis
from common import machine, write_results
from stack import TASK_SECRET, seed_tasks, service_env, uvicorn_app, wait_http

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from elevenlabs_agent.redis.server import RedisServer, free_port  # noqa: E402


async def send_callbacks(
    url: str, task_ids: list[str], forged: int, concurrency: int
) -> tuple[dict[int, int], list[float], float]:
    """(status -> count, latencies of the 200s, seconds for all)."""
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    jobs = [(t, TASK_SECRET) for t in task_ids] + [(t, "forged-secret") for t in task_ids[:forged]]

    async def one(client: httpx.AsyncClient, task_id: str, secret: str) -> None:
        body = {"requestId": task_id, "success": True, "exitCode": 0, "output": "done " * 40}
        async with gate:
            t0 = time.perf_counter()
            response = await client.post("/callback", json=body, headers={"X-Cursor-Runner-Secret": secret})
            if response.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, t, s) for t, s in jobs))
        return statuses, latencies, time.perf_counter() - started


def spool_records(url: str) -> int:
    spool = httpx.get(url + "/health", timeout=5).json()["callbackSpool"]
    return int(spool["records"])


def recorded(port: int, task_ids: list[str]) -> int:
    client = redis.Redis(port=port)
    try:
        pipe = client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hget(f"cursor_task:{task_id}", "recordedAt")
        return sum(1 for v in pipe.execute() if v)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=2000)
    parser.add_argument("--forged", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spool-bench-") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis", appendfsync="always")
        redis_server.start()
        runner_port, port = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        procs = [uvicorn_app("fake_runner:app", runner_port)]
        try:
            task_ids = [f"spool-bench-{n}" for n in range(args.callbacks)]
            seed_tasks(redis_server.port, iter(task_ids), lambda t: f"conv-spool-bench-{hash(t) % 50}")
            env = {
                **os.environ,
                **service_env(
                    url,
                    port,
                    redis_server.url,
                    f"http://127.0.0.1:{runner_port}",
                    Path(tmp) / "spool",
                    log_level="error",
                    redis_timeout_seconds=1,
                ),
            }
            with (Path(tmp) / "service.log").open("wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "elevenlabs_agent", "serve"], env=env, stdout=log))
            wait_http(url + "/health")

            redis_server.kill()
            statuses, latencies, send_seconds = asyncio.run(
                send_callbacks(url, task_ids, args.forged, args.concurrency)
            )
            waiting = spool_records(url)
            journal_bytes = sum(p.stat().st_size for p in (Path(tmp) / "spool").rglob("*.jsonl"))

            restarted = time.monotonic()
            redis_server.start()
            drained_at = None
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if spool_records(url) == 0:
                    drained_at = time.monotonic()
                    break
                time.sleep(0.01)
            stored = recorded(redis_server.port, task_ids)
            metrics_text = httpx.get(url + "/metrics", timeout=5).text
            discarded = sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics_text.splitlines()
                if line.startswith('elevenlabs_agent_callbacks_discarded_total{reason="forged"}')
            )
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(30)
            redis_server.stop()

    ordered = sorted(latencies)
    drain_seconds = (drained_at - restarted) if drained_at else None
    report = {
        "machine": machine(),
        "callbacks_sent_during_outage": args.callbacks + args.forged,
        "genuine": args.callbacks,
        "forged": args.forged,
        "answered": statuses,
        "spool_ack_per_s": round(len(latencies) / send_seconds, 1),
        "spool_ack_p50_ms": round(statistics.median(ordered) * 1000, 2) if ordered else None,
        "spool_ack_p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000, 2) if ordered else None,
        "spooled_records": waiting,
        "journal_bytes": journal_bytes,
        "redis_back_to_spool_empty_s": round(drain_seconds, 3) if drain_seconds else None,
        "replay_records_per_s": round(waiting / drain_seconds, 1) if drain_seconds else None,
        "results_stored": stored,
        "results_lost": args.callbacks - stored,
        "forged_discarded_at_replay": discarded,
    }
    width = max(map(len, report))
    for key, value in report.items():
        if key != "machine":
            print(f"{key:<{width}}  {value}")
    write_results("spool-replay", report)


if __name__ == "__main__":
    main()
