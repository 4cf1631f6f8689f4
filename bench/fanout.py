"""SSE fan-out client (its own process; bench/load.py runs it): N relay subscribers, one producer.

    python bench/fanout.py --target URL --run RUN [--subscribers 50] [--rate 200] [--duration 5]

Creates N conversations RUN-c<k> and registers a live session on each (SPEC §3), opens one SSE stream
GET /agent-conversations/api/{id}/events per conversation, prints READY, then POSTs /callback at a
fixed rate (open loop) for the pre-seeded tasks RUN-c<k>-t<i> (k = i mod N), round robin over the
conversations. Each subscriber acknowledges what it received, as the browser does. Delivery latency
runs from a callback's *scheduled* send time to its SSE event, so a producer that falls behind
cannot hide latency. After the producer it waits (at most --grace s) for the stragglers, then prints
one line `FANOUT {json}`: delivered, lost (accepted callbacks never received), duplicated,
misrouted, latency percentiles, its own CPU. Everything is bounded by a hard deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from httpc import ERRORS, Conn, conn_pool, cpu_percent, install_uvloop, open_loop, percentiles

SESSION_URL = "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=bench"


def task_id(run: str, subscribers: int, i: int) -> str:
    return f"{run}-c{i % subscribers}-t{i}"


def conversation_of(task: str) -> str:
    return task.rsplit("-t", 1)[0]


def callback_body(task: str) -> dict[str, Any]:
    return {
        "success": True,
        "requestId": task,
        "repository": "r",
        "command": ["cursor-agent"],
        "output": "done",
        "error": None,
        "exitCode": 0,
        "duration": "1000ms",
        "timestamp": "2026-01-01T00:00:00.000Z",
    }


@dataclass
class State:
    sent_at: dict[str, float] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    received: set[str] = field(default_factory=set)
    delivery: list[float] = field(default_factory=list)
    response: list[float] = field(default_factory=list)
    errors: int = 0
    duplicated: int = 0
    misrouted: int = 0
    acked: int = 0
    ack_failed: int = 0
    max_lag: float = 0.0
    last_received: float = 0.0


class Subscriber:
    def __init__(self, target: str, conversation: str, state: State, ack_pool: asyncio.Queue[Conn]) -> None:
        self.conn = Conn(target)
        self.conversation = conversation
        self.state = state
        self.ack_pool = ack_pool
        self.connected = asyncio.Event()
        self.to_ack: list[str] = []
        self.wake = asyncio.Event()

    async def read(self) -> None:
        buf = b""
        async for chunk in self.conn.stream(f"/agent-conversations/api/{self.conversation}/events"):
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                self.connected.set()
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        self.on_event(orjson.loads(line[6:]))

    def on_event(self, data: dict[str, Any]) -> None:
        now, s, task = time.monotonic(), self.state, data.get("taskId", "")
        if data.get("conversationId") != self.conversation or task not in s.sent_at:
            s.misrouted += 1
            return
        if task in s.received:
            s.duplicated += 1
            return
        s.received.add(task)
        s.delivery.append(now - s.sent_at[task])
        s.last_received = now
        self.to_ack.append(task)
        self.wake.set()

    async def ack(self) -> None:
        """Acknowledge received results in batches, one request in flight per subscriber."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.to_ack:
                batch, self.to_ack = self.to_ack[:100], self.to_ack[100:]
                conn = await self.ack_pool.get()
                try:
                    path = f"/agent-conversations/api/{self.conversation}/events/ack"
                    status, _ = await conn.request("POST", path, {"taskIds": batch})
                    if status == 200:
                        self.state.acked += len(batch)
                    else:
                        self.state.ack_failed += len(batch)
                except ERRORS:
                    self.state.ack_failed += len(batch)
                finally:
                    self.ack_pool.put_nowait(conn)


async def setup(target: str, conversations: list[str]) -> None:
    conn = Conn(target)
    for conv in conversations:
        status, body = await conn.request("POST", "/agent-conversations/api/new", {"conversationId": conv})
        if status != 201:
            raise ValueError(f"create {conv}: {status} {body[:200]!r}")
        session = {"sessionUrl": SESSION_URL, "metadata": {"elevenConversationId": "el-" + conv}}
        status, body = await conn.request("POST", f"/agent-conversations/api/{conv}/session", session)
        if status != 200:
            raise ValueError(f"register {conv}: {status} {body[:200]!r}")
    conn.close()


async def produce(args: argparse.Namespace, state: State) -> None:
    headers = {"X-Cursor-Runner-Secret": os.environ.get("BENCH_TASK_SECRET", "")}
    pool = conn_pool(args.target, args.connections)

    async def send(conn: Conn, i: int, due: float) -> None:
        task = task_id(args.run, args.subscribers, i)
        state.sent_at[task] = due
        try:
            status, _ = await conn.request("POST", "/callback", callback_body(task), headers)
            state.response.append(time.monotonic() - due)
            if status == 200:
                state.accepted.add(task)
            else:
                state.errors += 1
        except ERRORS:
            state.errors += 1
        finally:
            pool.put_nowait(conn)

    state.max_lag = await open_loop(args.rate, int(args.rate * args.duration), pool, send)


async def run(args: argparse.Namespace, state: State, report: dict[str, Any]) -> None:
    conversations = [f"{args.run}-c{k}" for k in range(args.subscribers)]
    report["phase"] = "setup"
    await setup(args.target, conversations)
    report["phase"] = "subscribe"
    ack_pool = conn_pool(args.target, 8)
    subs = [Subscriber(args.target, conv, state, ack_pool) for conv in conversations]
    readers = [asyncio.create_task(s.read()) for s in subs]
    background = readers + [asyncio.create_task(s.ack()) for s in subs]
    try:
        async with asyncio.timeout(10):
            await asyncio.gather(*(s.connected.wait() for s in subs))
        await asyncio.sleep(0.5)  # let every stream settle into its blocking read
        print("READY", flush=True)
        report["phase"] = "produce"
        cpu0, wall0 = time.process_time(), time.monotonic()
        await produce(args, state)
        report["producer_seconds"] = round(time.monotonic() - wall0, 3)
        report["phase"] = "drain"
        deadline = time.monotonic() + args.grace
        while not state.accepted <= state.received and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        report["seconds"] = round(max(state.last_received, wall0) - wall0, 3)
        report["client_cpu_percent"] = cpu_percent(cpu0, wall0)
        while state.acked + state.ack_failed < len(state.received) and time.monotonic() < deadline + 2:
            await asyncio.sleep(0.05)
        report["subscribers_ended_early"] = sum(t.done() for t in readers)
    finally:
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for s in subs:
            s.conn.close()


async def main(args: argparse.Namespace) -> int:
    state, report = State(), {"subscribers": args.subscribers, "target_rate": args.rate}
    failed = None
    try:
        async with asyncio.timeout(args.duration + args.grace + 60):
            await run(args, state, report)
    except TimeoutError:
        failed = f"timed out in phase {report.get('phase')}"
    except ERRORS as exc:
        failed = f"{type(exc).__name__} in phase {report.get('phase')}: {exc}"
    seconds = report.get("seconds") or 1.0
    report |= {
        "failed": failed,
        "sent": len(state.sent_at),
        "accepted": len(state.accepted),
        "errors": state.errors,
        "delivered": len(state.received),
        "lost": len(state.accepted - state.received),
        "duplicated": state.duplicated,
        "misrouted": state.misrouted,
        "acked": state.acked,
        "ack_failed": state.ack_failed,
        "producer_max_lag_ms": round(state.max_lag * 1000, 3),
        "rps": round(len(state.received) / seconds),
        **percentiles(state.delivery),
        "callback_response": percentiles(state.response),
    }
    print("FANOUT " + orjson.dumps(report).decode(), flush=True)
    return 0 if failed is None else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--run", required=True, help="prefix of the conversation and task ids")
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="callbacks per second, all conversations")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of producing")
    parser.add_argument("--connections", type=int, default=32, help="producer's keep-alive connections")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait for stragglers")
    install_uvloop()
    sys.exit(asyncio.run(main(parser.parse_args())))
