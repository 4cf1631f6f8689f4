"""Outbound client cost: httpx, aiohttp and the service's own `clients/http1.py` posting dispatches to
the loopback fake cursor-runner.

    .venv/bin/python bench/http_clients.py [--requests 4000] [--concurrency 50]

All three are pooled with keep-alive, as the service uses them; the figure that matters is the
client's CPU per request (the fake runner runs in its own process). Loopback only, bounded by
--requests.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from elevenlabs_agent.clients.http1 import Http1Client  # noqa: E402
from elevenlabs_agent.redis.server import free_port  # noqa: E402

BODY = {"id": "t", "prompt": "Add a health check", "conversationId": "c", "callbackUrl": "http://x/cb"}


async def run(post: Callable[[], Awaitable[int]], requests: int, concurrency: int) -> tuple[float, float]:
    """(requests per second of wall time, CPU microseconds per request in this process)."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            assert await post() == 200

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return requests / wall, cpu / requests * 1e6


async def main(url: str, requests: int, concurrency: int) -> None:
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_keepalive_connections=concurrency)) as hx:

        async def httpx_post() -> int:
            return (await hx.post("/cursor/execute/async", json=BODY)).status_code

        await run(httpx_post, 200, concurrency)
        hx_rps, hx_cpu = await run(httpx_post, requests, concurrency)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=concurrency)) as ah:

        async def aiohttp_post() -> int:
            async with ah.post("/cursor/execute/async", data=orjson.dumps(BODY)) as response:
                await response.read()
                return response.status

        await run(aiohttp_post, 200, concurrency)
        ah_rps, ah_cpu = await run(aiohttp_post, requests, concurrency)
    h1 = Http1Client(url, {}, 10.0, limit=concurrency)

    async def http1_post() -> int:
        return (await h1.post_json("/cursor/execute/async", orjson.dumps(BODY))).status

    await run(http1_post, 200, concurrency)
    h1_rps, h1_cpu = await run(http1_post, requests, concurrency)
    await h1.aclose()
    print(f"{'client':10} {'req/s':>8} {'cpu_us/req':>11}")
    print(f"{'httpx':10} {hx_rps:8.0f} {hx_cpu:11.0f}")
    print(f"{'aiohttp':10} {ah_rps:8.0f} {ah_cpu:11.0f}")
    print(f"{'http1':10} {h1_rps:8.0f} {h1_cpu:11.0f}")
    print(f"aiohttp/httpx: {ah_rps / hx_rps:.2f}x throughput, {hx_cpu / ah_cpu:.2f}x less CPU per request")
    print(f"http1/aiohttp: {h1_rps / ah_rps:.2f}x throughput, {ah_cpu / h1_cpu:.2f}x less CPU per request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    port = free_port()
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "fake_runner:app",
            "--app-dir",
            str(ROOT / "bench"),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        import uvloop

        uvloop.run(main(f"http://127.0.0.1:{port}", args.requests, args.concurrency))
    finally:
        runner.terminate()
        runner.wait(10)
