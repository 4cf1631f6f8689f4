"""The callback spool: a local, append-only journal of callbacks that arrived while Redis could not
record them (issue 13). cursor-runner sends each callback once; a callback written here and fsynced
is as durable as one Redis acknowledged, so it is answered 200 and recorded later (`SpoolReplayer`).

Format (chosen by measurement, `bench/spool_journal.py`): JSON lines, one record a line, each line
`<crc32 of the JSON, 8 hex digits> <JSON>\\n`, appended with one write(2) and fsynced before the
answer. A line without its newline, or whose checksum does not match, is a torn or damaged write: it
is skipped with a log line (it was never acknowledged: the fsync had not returned).

A record holds the task id, the callback's result fields, the SHA-256 of the secret the caller
presented (the same hash the task stores: the journal holds no usable secret), whether the caller
presented the shared webhook secret instead (checked at arrival, in constant time), and the arrival
time. The secret is verified against the task when the record is replayed, not before: Redis is
down when records are written.

Layout: `CALLBACK_SPOOL_DIR/<slot>/` holds one process's journal: `lock` (an exclusive flock, held
by that process for its whole life) and segments `<seq>.jsonl`. Each process (each worker, with
WORKERS > 1) takes the first free slot, so no two processes write one file. A process that died
(SIGKILL included) releases its lock with it; its successor takes the same free slot and replays what
it left, and any running process replays a slot nobody holds.

Appends go to the newest segment; a replay first seals it (later appends start a new one), then
replays sealed segments oldest first and deletes each once every record in it is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from elevenlabs_agent import events, metrics
from elevenlabs_agent.logging import get_logger

log = get_logger()
SEGMENT_SUFFIX = ".jsonl"
LOCK_NAME = "lock"
MAX_SLOTS = 256


class SpoolRefused(Exception):
    """The record was not written (cap reached, disk full, directory unwritable); nothing of it remains."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SpooledCallback:
    task_id: str
    body: dict[str, Any]
    token_hash: str
    shared_ok: bool
    received_at: str

    def encode(self) -> bytes:
        payload = orjson.dumps(
            {
                "taskId": self.task_id,
                "tokenHash": self.token_hash,
                "sharedOk": self.shared_ok,
                "receivedAt": self.received_at,
                "body": self.body,
            }
        )
        return b"%08x " % zlib.crc32(payload) + payload + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> SpooledCallback | None:
        """The record of one journal line, or None for a torn or damaged line."""
        if len(line) < 10 or not line.endswith(b"\n") or line[8:9] != b" ":
            return None
        payload = line[9:-1]
        try:
            if int(line[:8], 16) != zlib.crc32(payload):
                return None
            raw = orjson.loads(payload)
            return cls(
                task_id=str(raw["taskId"]),
                body=dict(raw["body"]),
                token_hash=str(raw["tokenHash"]),
                shared_ok=bool(raw["sharedOk"]),
                received_at=str(raw["receivedAt"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def received_epoch(self) -> float:
        try:
            return datetime.fromisoformat(self.received_at).timestamp()
        except ValueError:
            return 0.0


@dataclass(frozen=True)
class JournalLine:
    segment: Path
    offset: int  # of the line's first byte
    end: int  # offset just past it
    record: SpooledCallback | None  # None: torn or damaged


def segments(slot_dir: Path) -> list[Path]:
    """A slot's segments, oldest first."""
    found = [p for p in slot_dir.glob("*" + SEGMENT_SUFFIX) if p.stem.isdigit()]
    return sorted(found, key=lambda p: int(p.stem))


def read_lines(segment: Path, offset: int = 0) -> Iterator[JournalLine]:
    """Every line of a segment from `offset`, streamed (a segment can be as large as the cap)."""
    with segment.open("rb") as f:
        f.seek(offset)
        for line in f:
            end = offset + len(line)
            yield JournalLine(segment, offset, end, SpooledCallback.decode(line))
            offset = end


def spool_bytes(directory: Path) -> int:
    """Bytes held by every slot's segments (the cap is on the directory, all processes together)."""
    total = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for slot in os.scandir(directory):
            if slot.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    for entry in os.scandir(slot.path):
                        if entry.name.endswith(SEGMENT_SUFFIX):
                            with contextlib.suppress(FileNotFoundError):
                                total += entry.stat().st_size
    return total


def slot_dirs(directory: Path) -> list[Path]:
    with contextlib.suppress(OSError):
        return sorted((p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return []


def try_lock(slot_dir: Path) -> int | None:
    """An fd holding the slot's exclusive lock, or None if a live process holds it."""
    fd = os.open(slot_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_segment(segment: Path) -> None:
    segment.unlink(missing_ok=True)
    _fsync_dir(segment.parent)


class Journal:
    """This process's slot: appends (one at a time, each fsynced) and what is pending in it."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.slot_dir: Path | None = None
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._active_seq = 0
        self._write_lock = asyncio.Lock()
        # Held by the write (in a thread) and by `seal`. The asyncio lock alone is not enough: a request
        # cancelled while its write runs in the thread releases it, and a seal must still not land
        # between that write and its fsync.
        self._file_lock = threading.Lock()
        self.records = 0  # pending in this slot
        self.bytes = 0
        self.oldest_epoch: float | None = None  # arrival of the oldest pending record

    # --- ownership -------------------------------------------------------------------------------

    def open(self) -> bool:
        """Take the first free slot (creating the directory). False (logged) if that is impossible;
        then callbacks get today's 503 while Redis is down, and `open` is tried again on the next."""
        if self.slot_dir is not None:
            return True
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for n in range(MAX_SLOTS):
                slot_dir = self.directory / str(n)
                slot_dir.mkdir(exist_ok=True)
                fd = try_lock(slot_dir)
                if fd is not None:
                    break
            else:
                raise OSError("every spool slot is held")
        except OSError as exc:
            log.error(events.SPOOL_UNAVAILABLE, directory=str(self.directory), error=str(exc))
            return False
        self._lock_fd, self.slot_dir = fd, slot_dir
        existing = segments(slot_dir)
        self._active_seq = int(existing[-1].stem) + 1 if existing else 1
        self.records, self.bytes, self.oldest_epoch = scan_pending(existing)
        log.info(events.SPOOL_OPENED, directory=str(slot_dir), pendingRecords=self.records, pendingBytes=self.bytes)
        return True

    def close(self) -> None:
        with self._file_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
            self.slot_dir = None

    # --- writing ---------------------------------------------------------------------------------

    async def append(self, record: SpooledCallback) -> None:
        """Write and fsync one record, or raise SpoolRefused with nothing of it left behind."""
        line = record.encode()
        async with self._write_lock:
            if not self.open():
                raise SpoolRefused("unwritable")
            if spool_bytes(self.directory) + len(line) > self.max_bytes:
                raise SpoolRefused("full")
            try:
                await asyncio.to_thread(self._write, line)
            except OSError as exc:
                log.error(events.CALLBACK_SPOOL_WRITE_FAILED, error=str(exc), taskId=record.task_id)
                raise SpoolRefused("write_failed") from None
            self.records += 1
            self.bytes += len(line)
            if self.oldest_epoch is None:
                self.oldest_epoch = record.received_epoch
            metrics.CALLBACK_SPOOL_RECORDS.set(self.records)
            metrics.CALLBACK_SPOOL_BYTES.set(self.bytes)

    def _write(self, line: bytes) -> None:
        assert self.slot_dir is not None
        with self._file_lock:
            if self._fd is None:
                path = self.slot_dir / f"{self._active_seq:012d}{SEGMENT_SUFFIX}"
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                _fsync_dir(self.slot_dir)  # the new file's name is durable too
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                written = os.write(self._fd, line)
                if written != len(line):
                    raise OSError(f"short write ({written} of {len(line)} bytes)")
                os.fsync(self._fd)
            except OSError:
                # Disk full or an I/O error: take back whatever part of the line reached the file,
                # so a refused callback leaves nothing behind (were this to fail too, the torn line
                # fails its checksum at replay and is skipped).
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
                    os.fsync(self._fd)
                # The next append starts a new segment rather than trusting this file again.
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
                self._active_seq += 1
                raise

    async def seal(self) -> list[Path]:
        """End the active segment (the next append starts a new one); the segments to replay."""
        async with self._write_lock:
            with self._file_lock:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                    self._active_seq += 1
        assert self.slot_dir is not None
        return [p for p in segments(self.slot_dir) if int(p.stem) < self._active_seq]

    def forget(self, line: JournalLine) -> None:
        """Account for one replayed (or skipped) line."""
        self.bytes = max(0, self.bytes - (line.end - line.offset))
        if line.record is not None:
            self.records = max(0, self.records - 1)
        if self.records == 0:
            self.oldest_epoch = None

    def summary(self) -> dict[str, Any]:
        """What /health and /ready show: this process's pending spool."""
        oldest = self.oldest_epoch
        return {
            "records": self.records,
            "bytes": self.bytes,
            "oldestAgeSeconds": round(max(0.0, time.time() - oldest), 1) if oldest else 0,
            "maxBytes": self.max_bytes,
            "writable": self.slot_dir is not None,
        }

    def next_oldest(self, record: SpooledCallback | None) -> None:
        if self.records and record is not None:
            self.oldest_epoch = record.received_epoch


def scan_pending(found: list[Path]) -> tuple[int, int, float | None]:
    """(records, bytes, arrival of the first record) of a slot's segments."""
    records, size, oldest = 0, 0, None
    for segment in found:
        size += segment.stat().st_size
        for line in read_lines(segment):
            if line.record is not None:
                records += 1
                if oldest is None:
                    oldest = line.record.received_epoch
    return records, size, oldest


def slot_status(slot_dir: Path) -> dict[str, Any]:
    """One slot as the CLI shows it (read only; a held slot's active segment may grow meanwhile)."""
    fd = try_lock(slot_dir)
    held = fd is None
    if fd is not None:
        os.close(fd)
    records = torn = size = 0
    oldest: str | None = None
    found = segments(slot_dir)
    for segment in found:
        with contextlib.suppress(FileNotFoundError):
            size += segment.stat().st_size
            for line in read_lines(segment):
                if line.record is None:
                    torn += 1
                    continue
                records += 1
                oldest = oldest or line.record.received_at
    return {
        "slot": slot_dir.name,
        "path": str(slot_dir),
        "heldByLiveProcess": held,
        "segments": len(found),
        "records": records,
        "tornRecords": torn,
        "bytes": size,
        "oldestReceivedAt": oldest,
    }
