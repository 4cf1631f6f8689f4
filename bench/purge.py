"""Purge benchmark: `elevenlabs-agent tasks purge` (with backup) vs the raw redis-cli baseline.

    .venv/bin/python bench/purge.py [--keys 1000000]

Starts its own redis-server (loopback, temp dir), seeds N stuck `cursor_task:*` hashes, then in the
same run: (1) the baseline `redis-cli --scan --pattern 'cursor_task:*' | xargs redis-cli unlink`,
(2) re-seed, (3) `elevenlabs-agent tasks purge --older-than 24h --status pending --yes --backup F`.
During each it samples Redis' own latency (PING every 10 ms from another connection) and reads
SLOWLOG (threshold 10 ms). Prints a table and writes bench/results/purge-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from elevenlabs_agent.redis.server import RedisServer  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from common import machine, pipe_into_redis, resp, write_results  # noqa: E402

CREATED = "2026-01-01T00:00:00.000Z"


def seed(port: int, count: int) -> float:
    """N stuck pending tasks; returns seconds."""
    started = time.perf_counter()

    def commands() -> Iterator[bytes]:
        for i in range(count):
            key = f"cursor_task:bench-{i:07d}"
            yield resp(
                "HSET",
                key,
                "taskId",
                f"bench-{i:07d}",
                "conversationId",
                "conv-bench",
                "status",
                "pending",
                "createdAt",
                CREATED,
                "toolName",
                "code_task",
                "prompt",
                "benchmark task",
            )
            yield resp("EXPIRE", key, "86400")

    pipe_into_redis(port, commands())
    return time.perf_counter() - started


class LatencyProbe:
    """PINGs Redis every 10 ms from its own connection while a purge runs."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(port=port)
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            self.client.ping()
            self.samples.append((time.perf_counter() - t) * 1000)
            time.sleep(0.01)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = sorted(self.samples) or [0.0]
        return {
            "pings": len(s),
            "p50_ms": round(s[len(s) // 2], 3),
            "p99_ms": round(s[int(len(s) * 0.99)], 3),
            "max_ms": round(s[-1], 3),
        }


def slowlog(client: redis.Redis) -> dict[str, object]:
    entries = client.slowlog_get(1000)
    worst = max(entries, key=lambda e: e["duration"], default=None)
    names = sorted(
        {
            e["command"].split()[0].decode() if isinstance(e["command"], bytes) else str(e["command"]).split()[0]
            for e in entries
        }
    )
    return {
        "commands_over_10ms": len(entries),
        "slowest_ms": worst["duration"] / 1000 if worst else 0,
        "slow_commands": ",".join(names),
    }


def measured(port: int, label: str, command: str | list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    client = redis.Redis(port=port)
    client.config_set("slowlog-log-slower-than", 10000)
    client.config_set("slowlog-max-len", 100000)
    client.slowlog_reset()
    with LatencyProbe(port) as probe:
        started = time.perf_counter()
        result = subprocess.run(command, shell=isinstance(command, str), env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{label} failed: {result.stderr}")
    left = sum(1 for _ in client.scan_iter("cursor_task:*", count=10000))
    return {"run": label, "seconds": round(seconds, 2), "keys_left": left, **probe.summary(), **slowlog(client)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="purge-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis", appendonly=False)
        server.start()
        try:
            port = server.port
            seeded = seed(port, args.keys)
            baseline = measured(
                port,
                "baseline: redis-cli --scan | xargs redis-cli unlink",
                f"redis-cli -p {port} --scan --pattern 'cursor_task:*' | xargs redis-cli -p {port} unlink > /dev/null",
            )
            seed(port, args.keys)
            backup = Path(tmp) / "backup.jsonl"
            env = {**os.environ, "REDIS_URL": server.url}
            ours = measured(
                port,
                "elevenlabs-agent tasks purge (with backup)",
                [
                    sys.executable,
                    "-m",
                    "elevenlabs_agent",
                    "tasks",
                    "purge",
                    "--older-than",
                    "24h",
                    "--status",
                    "pending",
                    "--yes",
                    "--backup",
                    str(backup),
                    "--json",
                ],
                env,
            )
            with backup.open() as f:
                ours["backup_lines"] = sum(1 for _ in f)
            ours["backup_mb"] = round(backup.stat().st_size / 1e6, 1)
        finally:
            server.stop()
    ratio = round(float(ours["seconds"]) / float(baseline["seconds"]), 2)  # type: ignore[arg-type]
    report = {
        "benchmark": "purge",
        "keys": args.keys,
        "seed_seconds": round(seeded, 2),
        "machine": machine(),
        "runs": [baseline, ours],
        "ratio_ours_to_baseline": ratio,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    cols = [
        "run",
        "seconds",
        "keys_left",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "commands_over_10ms",
        "slowest_ms",
        "slow_commands",
    ]
    print(" | ".join(cols))
    for run in report["runs"]:  # type: ignore[attr-defined]
        print(" | ".join(str(run.get(c, "")) for c in cols))
    print(f"ratio (ours / baseline): {ratio}x   backup lines: {ours['backup_lines']} ({ours['backup_mb']} MB)")
    out = write_results("purge", report)
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
