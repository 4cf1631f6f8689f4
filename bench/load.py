"""HTTP benchmark: the service's hot paths under load, against baselines measured in the same run.

    .venv/bin/python bench/load.py [--duration 8] [--connections 50] [--scenarios health,mixed,...]
                                   [--subscribers 50 --fanout-rate 200] [--workers N]
                                   [--target URL --redis-url URL] [--rate R]
    .venv/bin/python bench/load.py --compare COMMIT [--rounds 3] [--baseline-dir DIR] [options above]

Without --target it starts everything itself on loopback (bench/stack.py): a redis-server (AOF on,
temp dir), a fast fake cursor-runner (accepts, never calls back), and `elevenlabs-agent serve` at
LOG_LEVEL=warning. Scenarios (wrk unless noted):
- health: GET /health;
- agent-tools: POST /agent-tools (original body shape, a new conversation per request);
- callback: POST /callback (cursor-runner's body, each request completes a different pre-seeded task);
- mixed: 45% /agent-tools, 45% /callback, 10% /health;
- fanout: SSE relay fan-out (bench/fanout.py, its own asyncio process): --subscribers streams, each
  on its own registered conversation, callbacks at --fanout-rate; its row's rps is events delivered
  per second, p50/p99/p99.9 the delivery latency (callback due -> SSE event), errors the failed
  callbacks; events lost / duplicated and the client's own CPU are on the line below the table;
- open-loop: bench/rate.py at a fixed rate (--rate, or half the route's closed-loop req/s of this
  run), one run each for agent-tools, callback and mixed; latency from each request's due time;
- one-caller: POST /agent-tools on one connection, one call after another (wrk -t1 -c1).
--compare COMMIT runs the scenarios against COMMIT and this checkout alternately (bench/compare.py).
Baselines, run without --compare: a bare ASGI app on the same uvicorn stack, and redis-benchmark PING (no
pipelining) divided by the Redis round trips a request makes. CPU and RSS are the service's
(process and children, RSS summed), measured only for a service started here; --workers N starts
it with WORKERS=N. Prints a table and writes bench/results/load-<time>.json. Loopback only; every
run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import machine, write_results  # noqa: E402
from fanout import conversation_of, task_id  # noqa: E402
from rate import CONVERSATIONS, callback_count, callback_task  # noqa: E402
from stack import (  # noqa: E402
    TASK_SECRET,
    WEBHOOK_SECRET,
    Stack,
    add_target_options,
    per_thread_tasks,
    proc_figures,
    running,
)

WRK = ROOT / "bench" / "wrk"
BARE = "bare ASGI (uvicorn ceiling)"
# name -> (table label, wrk script or None for a plain GET, path for a plain GET, callback share, seed prefix)
WRK_SCENARIOS: dict[str, tuple[str, str | None, str, float, str]] = {
    "health": ("GET /health", None, "/health", 0.0, ""),
    "agent-tools": ("POST /agent-tools", "agent_tools.lua", "", 0.0, ""),
    "callback": ("POST /callback", "callback.lua", "", 1.0, "cb"),
    "mixed": ("mixed 45/45/10", "mixed.lua", "", 0.45, "mix"),
}
OPEN_ROUTES = ("agent-tools", "callback", "mixed")  # open-loop runs each at its own fixed rate
SCENARIOS = [*WRK_SCENARIOS, "fanout", "open-loop", "one-caller"]
COMPARE_SCENARIOS = [*WRK_SCENARIOS, "open-loop", "one-caller"]  # --compare's default (fanout on request)
# Redis round trips per request on each path on one server (tests/test_redis_usage.py asserts 1 and
# 1; /health is one PING). mixed = 0.45 * 1 + 0.45 * 1 + 0.10 * 1.
ROUND_TRIPS = {"health": 1, "agent-tools": 1, "callback": 1, "mixed": 1.0}
# Callback tasks seeded per second of a run: above what 2 cores reach (5,000 ran out on a fast day;
# more only grows the dataset Redis rewrites its AOF from during the run, for both sides).
SEED_PER_SECOND = 10_000
COLUMNS = ["rps", "mean_ms", "p50_ms", "p99_ms", "p999_ms", "errors", "non2xx", "cpu_percent", "rss_mb"]
COLUMNS += ["vs_bare_asgi", "vs_redis_ceiling"]
WRK_TIMEOUT = "10s"  # wrk's default (2 s) would drop the slowest requests from the percentiles
RUN = f"b{datetime.now(UTC):%m%d%H%M%S}p{os.getpid()}"  # prefixes seeded ids: runs on one --target never collide


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def bench_env() -> dict[str, str]:
    return {**os.environ, "BENCH_WEBHOOK_SECRET": WEBHOOK_SECRET, "BENCH_TASK_SECRET": TASK_SECRET, "BENCH_RUN": RUN}


def run_wrk(
    wrk: str, url: str, script: str | None, args: argparse.Namespace, pid: int | None, **env: str
) -> dict[str, Any]:
    """One wrk run, with the CPU and RSS of the process `pid` (and its children) alongside; `env` adds
    to the scripts' environment."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        if script:
            f.write((WRK / "threads.lua").read_text())
            f.write((WRK / script).read_text())
        f.write((WRK / "report.lua").read_text())
    before = proc_figures(pid) if pid else (0.0, 0)
    options = [f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", WRK_TIMEOUT]
    out = subprocess.run(
        [wrk, *options, "-s", f.name, url],
        capture_output=True,
        text=True,
        env=bench_env() | env,
        timeout=args.duration + 60,
    ).stdout
    os.unlink(f.name)
    after = proc_figures(pid) if pid else (0.0, 0)
    match = re.search(r"^BENCH (\{.*\})$", out, re.M)
    if match is None:
        raise SystemExit(f"wrk printed no figures:\n{out}")
    figures: dict[str, Any] = json.loads(match.group(1))
    figures["rps"] = round(figures["requests"] / figures["seconds"])
    if pid:
        figures["cpu_percent"] = round((after[0] - before[0]) / figures["seconds"] * 100)
        figures["rss_mb"] = round(after[1] / 1e6, 1)
    return figures


def run_fanout(s: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """bench/fanout.py in its own process; service figures between its READY and its report."""
    run = f"{RUN}-fan"
    total = int(args.fanout_rate * args.duration)
    s.seed({t: conversation_of(t) for t in (task_id(run, args.subscribers, i) for i in range(total))})
    argv = [sys.executable, str(ROOT / "bench" / "fanout.py"), "--target", s.target, "--run", run]
    argv += ["--subscribers", str(args.subscribers), "--rate", str(args.fanout_rate)]
    argv += ["--duration", str(args.duration), "--grace", "10"]
    figures = child_figures(s, argv, "FANOUT ", args.duration)
    figures["non2xx"] = figures["errors"]
    return figures


def run_open_loop(s: Stack, route: str, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """bench/rate.py (open loop: request i due at i/rate, latency from that time) on one route or the
    mix, in its own process; service figures between its READY and its TOTAL."""
    run = f"{RUN}-open-{route}"
    count = callback_count(rate, args.duration, route)
    s.seed({callback_task(run, n): f"{run}-conv-{n % CONVERSATIONS}" for n in range(count)})
    argv = [sys.executable, str(ROOT / "bench" / "rate.py"), "--target", s.target, "--run", run, "--route", route]
    argv += ["--rate", str(rate), "--duration", str(args.duration), "--interval", str(args.duration + 120)]
    return {"offered_rps": rate, **child_figures(s, argv, "TOTAL ", args.duration)}


def child_figures(s: Stack, argv: list[str], marker: str, duration: float) -> dict[str, Any]:
    """Run a bench client (fanout.py, rate.py: each bounds itself) and return the JSON of its `marker`
    line, with the service's CPU and RSS between its READY line and that one."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=bench_env())
    watchdog = threading.Timer(duration + 120, proc.kill)  # a backstop
    watchdog.start()
    figures: dict[str, Any] = {}
    before, started = s.figures(), time.monotonic()
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("READY"):
            before, started = s.figures(), time.monotonic()
        elif line.startswith(marker):
            after, seconds = s.figures(), time.monotonic() - started
            figures = json.loads(line[len(marker) :])
            if s.service_pid:
                figures["cpu_percent"] = round((after[0] - before[0]) / seconds * 100)
                figures["rss_mb"] = round(after[1] / 1e6, 1)
    proc.wait()
    watchdog.cancel()
    if not figures:
        raise SystemExit(f"{Path(argv[1]).name} printed no figures (exit {proc.returncode})")
    return figures


def open_rate(closed_rps: float, args: argparse.Namespace) -> float:
    """The fixed rate of an open-loop run: --rate, or half the route's closed-loop req/s."""
    return float(args.rate or round(closed_rps / 2))


def units(scenarios: list[str]) -> list[str]:
    """The runs the scenarios make: open-loop is one run per route (open-loop:<route>)."""
    return [u for x in scenarios for u in ([f"open-loop:{r}" for r in OPEN_ROUTES] if x == "open-loop" else [x])]


def run_scenario(
    unit: str, s: Stack, args: argparse.Namespace, wrk: str, rates: dict[str, float]
) -> tuple[str, dict[str, Any]]:
    """One run (of units()) against the stack `s`: its table label and its figures, whose "kind" is
    closed (wrk, -t/-c as given), one (wrk -t1 -c1: one caller), open (fixed rate) or fanout."""
    if unit == "fanout":
        return f"SSE fan-out x{args.subscribers}", {"kind": "fanout", **run_fanout(s, args)}
    if unit.startswith("open-loop:"):
        route = unit.split(":", 1)[1]
        figures = run_open_loop(s, route, rates[route], args)
        return f"open loop {WRK_SCENARIOS[route][0]}", {"kind": "open", **figures}
    if unit == "one-caller":
        one = argparse.Namespace(**{**vars(args), "threads": 1, "connections": 1})
        figures = run_wrk(wrk, s.target, "agent_tools.lua", one, s.service_pid, BENCH_CONVERSATIONS=f"{RUN}-one")
        return "one caller POST /agent-tools", {"kind": "one", **figures, "round_trips": ROUND_TRIPS["agent-tools"]}
    label, script, path, callback_share, seed = WRK_SCENARIOS[unit]
    per_thread = SEED_PER_SECOND * args.duration // args.threads + 1000
    if callback_share:
        s.seed(per_thread_tasks(f"{RUN}-{seed}", args.threads, per_thread))
    figures = {"kind": "closed", **run_wrk(wrk, s.target + path, script, args, s.service_pid)}
    figures["round_trips"] = ROUND_TRIPS[unit]
    if callback_share:
        figures["seeded_tasks_completed"] = seeded_completed(s.redis_port, f"{RUN}-{seed}", args.threads)
        figures["seeded_tasks_exhausted"] = figures["requests"] * callback_share > 0.9 * per_thread * args.threads
    return label, figures


def seeded_completed(port: int, prefix: str, threads: int) -> bool:
    """Did the run complete the second seeded task of every thread (Lua and seeding agree on ids)? Not
    the first: wrk calls request() once on thread 0 before the run, so that one is never sent."""
    for thread in range(threads):
        argv = ["redis-cli", "-p", str(port), "HGET", f"cursor_task:{prefix}-{thread}-2", "status"]
        if subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip() != "completed":
            return False
    return True


def redis_ping_rps(port: int, connections: int) -> int:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "ping", "-n", "200000", "-c", str(connections), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return int(float(re.findall(r"([\d.]+) requests per second", out)[-1]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--scenarios",
        help=f"comma list of {','.join(SCENARIOS)} (default: all; with --compare {','.join(COMPARE_SCENARIOS)})",
    )
    parser.add_argument("--subscribers", type=int, default=50, help="fanout: SSE subscribers")
    parser.add_argument("--fanout-rate", type=float, default=200.0, help="fanout: callbacks per second")
    parser.add_argument(
        "--rate", type=float, help="open-loop: requests/s (default: half the route's closed-loop req/s; the baseline's)"
    )
    add_target_options(parser)
    parser.add_argument("--compare", metavar="COMMIT", help="bench COMMIT (the baseline) and this checkout in turn")
    parser.add_argument("--baseline-dir", metavar="DIR", help="--compare: an existing checkout with its .venv")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="--compare: runs of each side per scenario (median; even: as often first)",
    )
    args = parser.parse_args()
    default = COMPARE_SCENARIOS if args.compare or args.baseline_dir else SCENARIOS
    args.scenarios = [x.strip() for x in (args.scenarios or ",".join(default)).split(",") if x.strip()]
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if "open-loop" in args.scenarios and args.rate is None:  # its rates come from the closed-loop runs
        at = args.scenarios.index("open-loop")
        needed = [r for r in OPEN_ROUTES if r not in args.scenarios[:at]]
        args.scenarios = args.scenarios[:at] + needed + [x for x in args.scenarios[at:] if x not in needed]
    if (args.compare or args.baseline_dir) and args.target:
        parser.error("--compare starts its own services: no --target")
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    return args


def print_table(report: dict[str, Any]) -> None:
    runs = report["runs"]
    print(f"{'scenario':<30}" + "".join(f"{c:>17}" for c in COLUMNS))
    for name, figures in runs.items():
        cells = ("-" if figures.get(c, "") is None else figures.get(c, "") for c in COLUMNS)
        print(f"{name:<30}" + "".join(f"{cell:>17}" for cell in cells))
    print(f"redis-benchmark PING: {report['redis_ping_rps']} req/s. {report['redis_ceiling']}")
    if report["service_exited_early"] is not None:
        print(f"THE SERVICE EXITED DURING THE RUN (status {report['service_exited_early']}): figures after it are void")
    for name, figures in runs.items():
        if figures.get("failed"):
            print(f"{name}: FAILED: {figures['failed']}")
        elif "delivered" in figures:
            f = figures
            print(
                f"{name}: {f['subscribers']} subscribers, {f['target_rate']:g} callbacks/s for {report['duration']} s: "
                f"sent {f['sent']}, accepted {f['accepted']}, delivered {f['delivered']}, lost {f['lost']}, "
                f"duplicated {f['duplicated']}, misrouted {f['misrouted']}, acked {f['acked']}, streams ended "
                f"early {f.get('subscribers_ended_early')}; "
                "p50/p99/p99.9 = delivery latency (callback due -> SSE event); producer lag max "
                f"{f['producer_max_lag_ms']} ms; client CPU {f['client_cpu_percent']}%; fixed rate: no ceiling ratios"
            )
        elif figures.get("kind") == "open":
            f = figures
            print(
                f"{name}: offered {f['offered_rps']:g} req/s (fixed), achieved {f['rps']}; latency from each "
                f"request's due time; worst send lag {f['max_lag_ms']} ms; client CPU {f['client_cpu_percent']}%"
                + (f"; errors: {f['error_kinds']}" if f["errors"] else "")
            )
        elif figures.get("kind") == "one":
            print(f"{name}: one connection, calls one after another (wrk -t1 -c1); mean {figures['mean_ms']} ms")
        if figures.get("seeded_tasks_exhausted"):
            print(f"{name}: WARNING: ran out of seeded callback tasks; raise SEED_PER_SECOND")
        if figures.get("seeded_tasks_completed") is False:
            print(f"{name}: WARNING: its callbacks did not complete the seeded tasks (wrong ids?)")


def main() -> None:
    args = parse_args()
    wrk = ensure_wrk()
    if args.compare or args.baseline_dir:
        import compare  # imports this module: here, not at the top

        compare.main(args, wrk)
        return
    runs: dict[str, dict[str, Any]] = {}
    rates = dict.fromkeys(OPEN_ROUTES, float(args.rate)) if args.rate else {}
    with running(args) as s:
        bare, bare_pid = s.start_bare_asgi()
        runs[BARE] = run_wrk(wrk, bare + "/", None, args, bare_pid)
        for unit in units(args.scenarios):
            label, figures = run_scenario(unit, s, args, wrk, rates)
            runs[label] = figures
            if unit in OPEN_ROUTES:
                rates.setdefault(unit, open_rate(figures["rps"], args))
        ping = redis_ping_rps(s.redis_port, args.connections)
        service_exit = s.service_exit()

    ceiling = runs[BARE]["rps"]
    for figures in runs.values():
        if figures.get("kind", "closed") != "closed":  # a fixed rate or one caller: its req/s is no capacity
            figures["vs_bare_asgi"] = figures["vs_redis_ceiling"] = None
            continue
        figures["vs_bare_asgi"] = round(figures["rps"] / ceiling, 3)
        if "round_trips" in figures:
            figures["vs_redis_ceiling"] = round(figures["rps"] / (ping / figures["round_trips"]), 3)
    report = {
        "benchmark": "http",
        "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration}s --timeout {WRK_TIMEOUT}",
        "duration": args.duration,
        "workers": args.workers,
        "service_exited_early": service_exit,
        "redis_ping_rps": ping,
        "redis_ceiling": (
            f"vs_redis_ceiling = req/s / (PING req/s at -c{args.connections}, no pipelining / Redis round trips "
            f"per request: {', '.join(f'{k} {v}' for k, v in ROUND_TRIPS.items())}); an upper bound, a scripted "
            "round trip costs Redis more than a PING"
        ),
        "runs": runs,
        "machine": machine(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = write_results("load", report)
    print_table(report)
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
