"""Shared by the benchmarks: loading Redis fast, and writing results with the machine described."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def resp(*args: str) -> bytes:
    """One command as raw RESP, for redis-cli --pipe."""
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def pipe_into_redis(port: int, commands: Iterable[bytes], chunk: int = 20_000) -> None:
    """Send RESP commands through `redis-cli --pipe`, the fastest loader."""
    proc = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stdin is not None
    batch: list[bytes] = []
    for command in commands:
        batch.append(command)
        if len(batch) >= chunk:
            proc.stdin.write(b"".join(batch))
            batch = []
    proc.stdin.write(b"".join(batch))
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit("redis-cli --pipe failed")


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def write_results(name: str, report: dict[str, Any]) -> Path:
    out = ROOT / "bench" / "results" / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
