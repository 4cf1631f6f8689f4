"""Callback spool: SQLite (WAL, synchronous=FULL) vs JSON lines + fsync + a CRC per record.

Both are measured the way the spool uses them: one durable append per callback (the 200 is sent
only after it), then one sequential drain. Prints a table and writes JSON to bench/results/.

    .venv/bin/python bench/spool_journal.py --records 300 --body-bytes 2000,200000
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from common import machine, write_results


def record(i: int, size: int) -> dict[str, Any]:
    return {
        "taskId": f"task-{i:08d}",
        "tokenHash": "a" * 64,
        "sharedOk": False,
        "receivedAt": "2026-12-02T05:00:00.000Z",
        "body": {"requestId": f"task-{i:08d}", "success": True, "exitCode": 0, "output": "x" * size},
    }


def bench_jsonl(directory: Path, records: list[dict[str, Any]]) -> dict[str, float]:
    path = directory / "journal.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    latencies = []
    started = time.perf_counter()
    for item in records:
        t0 = time.perf_counter()
        payload = json.dumps(item, separators=(",", ":")).encode()
        os.write(fd, b"%08x " % zlib.crc32(payload) + payload + b"\n")
        os.fsync(fd)
        latencies.append(time.perf_counter() - t0)
    append_s = time.perf_counter() - started
    os.close(fd)
    size = path.stat().st_size
    started = time.perf_counter()
    count = 0
    with path.open("rb") as f:
        for line in f:
            crc, payload = line[:8], line[9:-1]
            if int(crc, 16) == zlib.crc32(payload):
                json.loads(payload)
                count += 1
    path.unlink()
    drain_s = time.perf_counter() - started
    assert count == len(records)
    return summary(latencies, append_s, drain_s, size)


def bench_sqlite(directory: Path, records: list[dict[str, Any]]) -> dict[str, float]:
    path = directory / "journal.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY, task_id TEXT, record BLOB)")
    latencies = []
    started = time.perf_counter()
    for item in records:
        t0 = time.perf_counter()
        payload = json.dumps(item, separators=(",", ":")).encode()
        db.execute("INSERT INTO spool (task_id, record) VALUES (?, ?)", (item["taskId"], payload))
        latencies.append(time.perf_counter() - t0)
    append_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in directory.glob("journal.sqlite*"))
    started = time.perf_counter()
    count = 0
    for row_id, payload in db.execute("SELECT id, record FROM spool ORDER BY id").fetchall():
        json.loads(payload)
        db.execute("DELETE FROM spool WHERE id = ?", (row_id,))
        count += 1
    drain_s = time.perf_counter() - started
    db.close()
    assert count == len(records)
    return summary(latencies, append_s, drain_s, size)


def summary(latencies: list[float], append_s: float, drain_s: float, size: int) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "appends_per_s": round(len(latencies) / append_s, 1),
        "append_p50_ms": round(statistics.median(ordered) * 1000, 3),
        "append_p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
        "drain_records_per_s": round(len(latencies) / drain_s, 1),
        "bytes_on_disk": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--body-bytes", default="2000,200000", help="comma list of callback output sizes")
    parser.add_argument("--dir", default=None, help="directory to measure in (default: a temp dir under .)")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.body_bytes.split(",")):
        records = [record(i, size) for i in range(args.records)]
        for name, fn in (("jsonl+fsync+crc", bench_jsonl), ("sqlite-wal-full", bench_sqlite)):
            with tempfile.TemporaryDirectory(dir=args.dir or ".") as tmp:
                rows.append({"journal": name, "body_bytes": size, **fn(Path(tmp), records)})
    header = ("journal", "body_bytes", "appends_per_s", "append_p50_ms", "append_p99_ms", "drain_records_per_s")
    print(" ".join(f"{h:>20}" for h in header))
    for row in rows:
        print(" ".join(f"{row[h]!s:>20}" for h in header))
    write_results("spool-journal", {"machine": machine(), "records": args.records, "rows": rows})


if __name__ == "__main__":
    main()
