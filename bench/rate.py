"""Fixed-rate load client (its own process; bench/soak.py runs it). Debian has no wrk2, and wrk has no
fixed rate, so this is an open-loop asyncio client on a few keep-alive connections.

    python bench/rate.py --target URL --run RUN [--rate 50] [--duration 600] [--interval 30] [--route mixed]

--route mixed (the default), in a cycle of 20 requests: 9 POST /agent-tools (over 200 conversations
RUN-conv-<k>), 9 POST /callback (each completing the pre-seeded task RUN-t<n>, n from 0), 2 GET
/health. --route agent-tools: only tool calls, each on a new conversation (as bench/wrk/agent_tools.lua);
--route callback: only callbacks, request n completing RUN-t<n>. A request is an error unless it gets
200 and the body it should (tool dispatched, task completed, Redis connected). Latency runs from each
request's scheduled time. Prints READY when the load starts, `SAMPLE {json}` every --interval s (the
requests finished in it) and `TOTAL {json}` at the end; bounded by a hard deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from typing import Any

import orjson
from fanout import callback_body
from httpc import ERRORS, Conn, conn_pool, cpu_percent, install_uvloop, open_loop, percentiles

CONVERSATIONS = 200


def callback_task(run: str, n: int) -> str:
    return f"{run}-t{n}"


ROUTES = ("mixed", "agent-tools", "callback")
CALLBACK_SHARE = {"mixed": 9 / 20, "agent-tools": 0.0, "callback": 1.0}


def callback_count(rate: float, duration: float, route: str = "mixed") -> int:
    """How many callback tasks a run needs seeded."""
    return int(rate * duration * CALLBACK_SHARE[route]) + 10


def request_of(route: str, i: int) -> tuple[str, int]:
    """Request i of a run: its kind (health, tool, callback) and n, its number among its kind's requests."""
    if route != "mixed":
        return ("tool" if route == "agent-tools" else "callback"), i
    slot, cycle = i % 20, i // 20
    if slot >= 18:
        return "health", 0
    return ("tool" if slot % 2 == 0 else "callback"), cycle * 9 + slot // 2


async def send_request(
    conn: Conn, run: str, route: str, i: int, headers: tuple[dict[str, str], dict[str, str]]
) -> tuple[str, int, bytes, bytes]:
    """Send request i of a run (`headers`: the tool webhook's, the callback's); its kind, status, reply
    and what the reply must contain to count as served."""
    kind, n = request_of(route, i)
    if kind == "health":
        status, reply = await conn.request("GET", "/health")
        return kind, status, reply, b'"redis":"connected"'
    if kind == "tool":
        conversation = f"{run}-conv-{n % CONVERSATIONS}"
        if route == "agent-tools":  # a new conversation per call, as wrk's agent-tools scenario
            conversation = f"{run}-new-{n}"
        body = {"tool_name": "code_task", "tool_args": {"prompt": "Add a health check"}}
        body |= {"agent_id": "agent_bench", "session_id": "s-bench", "conversation_id": conversation}
        status, reply = await conn.request("POST", "/agent-tools", body, headers[0])
        return kind, status, reply, b'"success":true'
    status, reply = await conn.request("POST", "/callback", callback_body(callback_task(run, n)), headers[1])
    return kind, status, reply, b'"status":"completed"'  # not an unknown task, not a duplicate


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.started = time.monotonic()

    def take(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.started
        out: dict[str, Any] = {"requests": len(self.latencies), "rps": round(len(self.latencies) / seconds, 1)}
        out |= {"errors": self.errors, **percentiles(self.latencies)}
        out["max_ms"] = round(max(self.latencies, default=0) * 1000, 3)
        self.latencies, self.errors, self.started = [], 0, time.monotonic()
        return out


async def run(args: argparse.Namespace) -> None:
    headers = (
        {"X-Webhook-Secret": os.environ.get("BENCH_WEBHOOK_SECRET", "")},
        {"X-Cursor-Runner-Secret": os.environ.get("BENCH_TASK_SECRET", "")},
    )
    pool = conn_pool(args.target, args.connections)
    interval, total = Stats(), Stats()
    error_kinds: Counter[str] = Counter()  # what failed, for the TOTAL line

    async def send(conn: Conn, i: int, due: float) -> None:
        kind = request_of(args.route, i)[0]
        try:
            kind, status, reply, expected = await send_request(conn, args.run, args.route, i, headers)
            error = None if status == 200 and expected in reply else f"{kind} {status}: {reply[:80]!r}"
        except ERRORS as e:
            error = f"{kind}: {type(e).__name__}"
        finally:
            pool.put_nowait(conn)
        latency = time.monotonic() - due
        for stats in (interval, total):
            stats.latencies.append(latency)
            stats.errors += error is not None
        if error is not None:
            error_kinds[error] += 1

    async def report() -> None:
        while True:
            await asyncio.sleep(args.interval)
            print("SAMPLE " + orjson.dumps(interval.take()).decode(), flush=True)

    cpu0, wall0 = time.process_time(), time.monotonic()
    reporter = asyncio.create_task(report())
    print("READY", flush=True)
    lag, failed = 0.0, None
    try:
        async with asyncio.timeout(args.duration + 60):
            lag = await open_loop(args.rate, int(args.rate * args.duration), pool, send)
    except TimeoutError:
        failed = "hard deadline hit"
    finally:
        reporter.cancel()
    if interval.latencies:
        print("SAMPLE " + orjson.dumps(interval.take()).decode(), flush=True)
    summary = total.take() | {"max_lag_ms": round(lag * 1000, 3), "client_cpu_percent": cpu_percent(cpu0, wall0)}
    summary["failed"] = failed
    summary["error_kinds"] = dict(error_kinds.most_common(5))
    print("TOTAL " + orjson.dumps(summary).decode(), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--run", required=True, help="prefix of the conversation and task ids")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--route", choices=ROUTES, default="mixed")
    install_uvloop()
    asyncio.run(run(parser.parse_args()))
    sys.exit(0)
