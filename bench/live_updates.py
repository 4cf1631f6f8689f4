"""Live-update WebSockets (issue 10): idle sockets held, memory per socket, and update latency from a
cursor-runner callback stored by instance B to the WebSocket frame on instance A.

    .venv/bin/python bench/live_updates.py [--sockets 1000] [--rounds 200] [--fanout 100]

Everything on loopback and bounded: an embedded redis-server, two `elevenlabs-agent serve`
subprocesses (A and B, one Redis), a loopback cursor-runner that never calls back by itself.
1. `--sockets` idle WebSockets on A spread over 10 conversations; RSS of A before and after.
2. `--rounds` tasks, one at a time: the tool webhook on B, then the callback POSTed to B; latency from
   sending the callback to the `tool_result` frame on a socket held by A (p50/p99/max).
3. One client message on B to a conversation that `--fanout` sockets on A watch: time until all of
   them have the frame.
Prints a JSON report and writes it to bench/results/live-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, write_results
from elevenlabs_agent.redis.server import RedisServer, free_port
from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner, callback_body, split_secret
from elevenlabs_agent.sim.server import LocalServer
from elevenlabs_agent.sim.stack import as_env, service_fields

# Browser routes: the identity a loopback authenticating proxy would set (BROWSER_AUTH=proxy).
IDENTITY = {"X-Forwarded-User": "bench"}

API = "/agent-conversations/api"
SECRET = "bench-webhook-secret-0123456789"
RUNNER_SECRET = "bench-runner-secret-0123456789"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def start_serve(redis_url: str, runner_url: str, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    fields = service_fields(
        f"http://127.0.0.1:{port}",
        port=port,
        host="127.0.0.1",
        redis_url=redis_url,
        webhook_secret=SECRET,
        cursor_runner_url=runner_url,
        cursor_runner_secret=RUNNER_SECRET,
        log_level="warning",
        callback_spool_dir=str(log.parent / f"spool-{port}"),
    )
    env = {**os.environ, **as_env(fields)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "elevenlabs_agent",
        "serve",
        env=env,
        stdout=log.open("wb"),
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(600):
            try:
                if (await client.get(url + "/ready")).status_code == 200:
                    return process, url
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"serve did not become ready; see {log}")


async def frame(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    return loaded


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
    redis = RedisServer(tmp / "redis")
    redis.start()
    runner = FakeCursorRunner(secret=RUNNER_SECRET, callback_kind="none")
    processes: list[asyncio.subprocess.Process] = []
    try:
        async with LocalServer(runner.app()) as runner_server:
            (proc_a, a), (proc_b, b) = await asyncio.gather(
                start_serve(redis.url, runner_server.url, tmp / "a.log"),
                start_serve(redis.url, runner_server.url, tmp / "b.log"),
            )
            processes += [proc_a, proc_b]
            ws_a = a.replace("http://", "ws://") + f"{API}/ws?conversationId="
            async with (
                httpx.AsyncClient(headers=IDENTITY, base_url=a, timeout=10) as on_a,
                httpx.AsyncClient(headers=IDENTITY, base_url=b, timeout=10) as on_b,
            ):
                conversations = [f"idle-{n}" for n in range(10)]
                for conversation_id in [*conversations, "latency", "fanout"]:
                    await on_a.post(f"{API}/new", json={"conversationId": conversation_id})

                # 1. idle sockets and memory
                async with websockets.connect(ws_a + "latency", additional_headers=IDENTITY) as warm:
                    await frame(warm)
                await asyncio.sleep(0.5)
                before = rss(proc_a.pid)
                idle: list[Any] = []
                for start in range(0, args.sockets, 100):
                    count = min(100, args.sockets - start)
                    idle += await asyncio.gather(
                        *(
                            websockets.connect(ws_a + conversations[n % 10], additional_headers=IDENTITY)
                            for n in range(start, start + count)
                        )
                    )
                await asyncio.gather(*(frame(ws) for ws in idle))
                await asyncio.sleep(1.0)
                after = rss(proc_a.pid)
                held = float(
                    next(
                        line.split()[-1]
                        for line in (await on_a.get("/metrics")).text.splitlines()
                        if line.startswith("elevenlabs_agent_websocket_subscribers ")
                    )
                )

                # 2. callback on B -> frame on A
                latencies = []
                async with websockets.connect(ws_a + "latency", additional_headers=IDENTITY) as watcher:
                    await frame(watcher)
                    for n in range(args.rounds):
                        started = await on_b.post(
                            "/agent-tools",
                            json={"conversation_id": "latency", "prompt": f"task {n}"},
                            headers={"X-Webhook-Secret": SECRET},
                        )
                        task_id = started.json()["taskId"]
                        assert (await frame(watcher))["reason"] == "tool_call"
                        sent = next(r for r in runner.received if r["id"] == task_id)
                        url, secret = split_secret(sent["callbackUrl"])
                        body = callback_body("completion", task_id, sent["prompt"])
                        t0 = time.perf_counter()
                        answer = await on_b.post(
                            url.removeprefix(b), json=body, headers={"X-Webhook-Secret": secret or ""}
                        )
                        assert answer.status_code == 200, answer.text
                        update = await frame(watcher)
                        latencies.append((time.perf_counter() - t0) * 1000)
                        assert update["reason"] == "tool_result", update

                # 3. fan-out of one change to many sockets on A
                watchers = await asyncio.gather(*(websockets.connect(ws_a + "fanout") for _ in range(args.fanout)))
                await asyncio.gather(*(frame(ws) for ws in watchers))
                t0 = time.perf_counter()
                await on_b.post(f"{API}/fanout/message", json={"role": "user", "content": "all", "source": "text"})
                await asyncio.gather(*(frame(ws) for ws in watchers))
                fanout_ms = (time.perf_counter() - t0) * 1000
                await asyncio.gather(*(ws.close() for ws in [*idle, *watchers]), return_exceptions=True)

        return {
            "machine": machine(),
            "idle_sockets": {
                "requested": args.sockets,
                "held": held,
                "rss_before_mib": round(before / 2**20, 1),
                "rss_after_mib": round(after / 2**20, 1),
                "rss_per_socket_kib": round((after - before) / args.sockets / 1024, 1),
            },
            "callback_b_to_frame_on_a_ms": {
                "rounds": len(latencies),
                "p50": round(statistics.median(latencies), 2),
                "p99": round(percentile(latencies, 0.99), 2),
                "max": round(max(latencies), 2),
            },
            "fanout": {"sockets": args.fanout, "all_received_ms": round(fanout_ms, 1)},
        }
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--fanout", type=int, default=100)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    print(f"written to {write_results('live', report)}")


if __name__ == "__main__":
    main()
