"""Callback -> `contextual_update` latency through relay.js in Chromium with the official ElevenLabs SDK.

    .venv/bin/python bench/browser_relay.py [--results 200] [--concurrency 1] [--speak]

The stack of tests/test_browser_relay.py (tests/browser_harness.py: its own redis-server, the service
as a `serve` subprocess, the ElevenLabs and cursor-runner stand-ins, Debian's Chromium holding a voice
session of `@elevenlabs/client` with a fake microphone), one page relaying. For each result: a tool
call, then cursor-runner's callback; latency runs from just before the callback is sent to the moment
the stand-in's conversation socket reads the `contextual_update` the page's SDK sent. `--concurrency`
callbacks are in flight at once. Prints p50/p90/p99/max, checks each result arrived exactly once, and
writes JSON to bench/results/. Bounded: every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "bench")]
from common import machine, write_results  # noqa: E402

from elevenlabs_agent.redis.server import RedisServer  # noqa: E402
from tests.browser_harness import BrowserStack, browser_stack, percentile, sdk_version  # noqa: E402


async def one(stack: BrowserStack, eleven_id: str, n: int) -> float:
    task = await stack.tool_call(eleven_id, f"Latency probe {n}")
    sent = await stack.callback(task)
    await stack.wait_update(eleven_id, task.task_id, timeout=30)
    conversation = stack.conversation(eleven_id)
    arrived = next(
        t
        for f, t in zip(conversation.frames, conversation.frame_times, strict=True)
        if f.get("type") == "contextual_update" and f.get("context_id") == task.task_id
    )
    return (arrived - sent) * 1000


async def run(results: int, concurrency: int, speak: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-browser-relay-") as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        redis.start()
        try:
            async with browser_stack(Path(tmp), redis.url) as stack:
                conversation_id = await stack.create_conversation()
                page = await stack.open_page(conversation_id, speak=speak)
                eleven_id = await stack.eleven_id(page)
                await one(stack, eleven_id, -1)  # warm-up, not counted
                latencies: list[float] = []
                started = time.perf_counter()
                for first in range(0, results, concurrency):
                    batch = range(first, min(first + concurrency, results))
                    latencies += await asyncio.gather(*(one(stack, eleven_id, n) for n in batch))
                elapsed = time.perf_counter() - started
                conversation = stack.conversation(eleven_id)
                ids = [u["context_id"] for u in conversation.contextual_updates]
                duplicated = len(ids) - len(set(ids))
                return {
                    "results": results,
                    "concurrency": concurrency,
                    "speak": speak,
                    "sdk": f"@elevenlabs/client {sdk_version()}",
                    "browser": stack.browser.version,
                    "duplicated": duplicated,
                    "protocol_errors": len(conversation.protocol_errors),
                    "pings_answered": f"{len(conversation.pongs)}/{conversation.pings_sent}",
                    "elapsed_s": round(elapsed, 2),
                    "latency_ms": {
                        "p50": round(percentile(latencies, 50), 2),
                        "p90": round(percentile(latencies, 90), 2),
                        "p99": round(percentile(latencies, 99), 2),
                        "max": round(max(latencies), 2),
                    },
                    "machine": machine(),
                    "load_average_1m": round(os.getloadavg()[0], 2),  # the 2 cores may be shared
                }
        finally:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--speak", action="store_true", help="startRelay({speak: true})")
    args = parser.parse_args()
    report = asyncio.run(asyncio.wait_for(run(args.results, args.concurrency, args.speak), timeout=600))
    latency = report["latency_ms"]
    print(
        f"{report['results']} results (concurrency {report['concurrency']}) via relay.js, {report['sdk']}, "
        f"Chromium {report['browser']}: callback -> contextual_update "
        f"p50 {latency['p50']} ms, p90 {latency['p90']} ms, p99 {latency['p99']} ms, max {latency['max']} ms; "  # type: ignore[index]
        f"duplicated {report['duplicated']}, protocol errors {report['protocol_errors']}, "
        f"pings answered {report['pings_answered']}"
    )
    print(f"written to {write_results('browser-relay', report)}")
    if report["duplicated"] or report["protocol_errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
