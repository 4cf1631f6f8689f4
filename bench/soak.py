"""Soak (issue 5): steady moderate load for a long time, watching the service's memory and latency.

    .venv/bin/python bench/soak.py [--duration 600] [--rate 50] [--interval 30] [--target URL --redis-url URL]

Starts the service the way bench/load.py does (bench/stack.py), or uses --target. bench/rate.py, in
its own process, sends --rate requests/s at a fixed rate (open loop; 45% POST /agent-tools over 200
conversations, 45% POST /callback completing pre-seeded tasks, 10% GET /health). Every --interval s
it samples the service's RSS and CPU, Redis' used memory and the interval's latency p50/p99 (from
each request's scheduled time). Prints the samples, RSS start/end/growth (and its slope), latency
drift between the first and the last full sample, and writes bench/results/soak-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import machine, write_results  # noqa: E402
from load import bench_env  # noqa: E402
from rate import CONVERSATIONS, callback_count, callback_task  # noqa: E402
from stack import add_target_options, running, seed_tasks  # noqa: E402

COLUMNS = ["t_s", "rps", "errors", "p50_ms", "p99_ms", "max_ms", "cpu_percent", "rss_mb", "redis_mb"]


def redis_used_mb(port: int) -> float:
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True, text=True, timeout=10)
    used = next((line.split(":")[1] for line in out.stdout.splitlines() if line.startswith("used_memory:")), "0")
    return round(int(used) / 1e6, 1)


def slope_per_minute(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (seconds), per minute."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 60, 3) if var else None


def summarise(samples: list[dict[str, Any]], idle_rss_mb: float, args: argparse.Namespace) -> dict[str, Any]:
    full = [s for s in samples if s["requests"] >= 0.5 * args.rate * args.interval] or samples
    if not full:
        return {}
    first, last = full[0], full[-1]
    out: dict[str, Any] = {"rss_idle_mb": idle_rss_mb, "rss_start_mb": first["rss_mb"], "rss_end_mb": last["rss_mb"]}
    out["rss_growth_mb"] = round(last["rss_mb"] - first["rss_mb"], 1)
    out["rss_growth_percent"] = round(out["rss_growth_mb"] / first["rss_mb"] * 100, 1)
    out["rss_slope_mb_per_min"] = slope_per_minute([s["t_s"] for s in full], [s["rss_mb"] for s in full])
    out["redis_growth_mb"] = round(last["redis_mb"] - first["redis_mb"], 1)
    for p in ("p50_ms", "p99_ms"):
        if first[p] is not None and last[p] is not None:
            out[p.replace("_ms", "_drift_ms")] = round(last[p] - first[p], 3)
            out[p.replace("_ms", "_drift_ratio")] = round(last[p] / first[p], 2) if first[p] else None
    out["samples_compared"] = f"t={first['t_s']} s vs t={last['t_s']} s"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=600, help="seconds of load")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (fixed)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--connections", type=int, default=32, help="client keep-alive connections")
    add_target_options(parser)
    args = parser.parse_args()
    samples: list[dict[str, Any]] = []
    total: dict[str, Any] = {}
    with running(args) as s:
        run = f"soak{datetime.now(UTC):%m%d%H%M%S}p{os.getpid()}"
        ids = (callback_task(run, n) for n in range(callback_count(args.rate, args.duration)))
        seed_tasks(s.redis_port, ids, lambda t: f"{run}-conv-{int(t.rsplit('-t', 1)[1]) % CONVERSATIONS}")
        idle_rss_mb = round(s.figures()[1] / 1e6, 1)
        argv = [sys.executable, str(ROOT / "bench" / "rate.py"), "--target", s.target, "--run", run]
        argv += ["--rate", str(args.rate), "--duration", str(args.duration), "--interval", str(args.interval)]
        argv += ["--connections", str(args.connections)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=bench_env())
        watchdog = threading.Timer(args.duration + 120, proc.kill)  # rate.py bounds itself; a backstop
        watchdog.start()
        started = time.monotonic()
        cpu_before, cpu_at = s.figures()[0], started
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, _, payload = line.partition(" ")
            if kind == "SAMPLE":
                cpu, rss = s.figures()
                now = time.monotonic()
                sample = {"t_s": round(now - started), **json.loads(payload), "rss_mb": round(rss / 1e6, 1)}
                if s.service_pid:
                    sample["cpu_percent"] = round((cpu - cpu_before) / (now - cpu_at) * 100)
                sample["redis_mb"] = redis_used_mb(s.redis_port)
                cpu_before, cpu_at = cpu, now
                samples.append(sample)
                print("  ".join(f"{c}={sample.get(c)}" for c in COLUMNS), flush=True)
            elif kind == "TOTAL":
                total = json.loads(payload)
        proc.wait()
        watchdog.cancel()
        service_exit = s.service_exit()
    if not total:
        raise SystemExit(f"rate.py printed no totals (exit {proc.returncode})")
    summary = summarise(samples, idle_rss_mb, args) if s.service_pid and service_exit is None else {}
    report = {
        "benchmark": "soak",
        "rate": args.rate,
        "duration": args.duration,
        "interval": args.interval,
        "mix": "45% POST /agent-tools, 45% POST /callback, 10% GET /health; latency from the scheduled time",
        "samples": samples,
        "total": total,
        "summary": summary,
        "service_exited_early": service_exit,
        "machine": machine(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = write_results("soak", report)
    print()
    print("".join(f"{c:>12}" for c in COLUMNS))
    for sample in samples:
        print("".join(f"{sample.get(c, '-')!s:>12}" for c in COLUMNS))
    print(f"total: {json.dumps(total)}")
    print(f"summary: {json.dumps(summary)}")
    if service_exit is not None:
        print(f"THE SERVICE EXITED DURING THE RUN (status {service_exit}): no summary")
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
