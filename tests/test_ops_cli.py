"""Operator commands (SPEC §6, §7): stats, listings, purge with backup, restore, the purge lease and
error handling, run as real subprocesses against the suite's redis-server.

Redis is seeded directly with the key shapes the service writes, so these tests pin down what an
operator sees for the data that is really there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_sync

from elevenlabs_agent.ops.durations import format_duration, parse_duration
from elevenlabs_agent.redis.server import RedisServer
from elevenlabs_agent.stores import KEY_FAMILIES
from tests.helpers import assert_one_error_line, ok, ok_json, run_cli

TASK_TTL = 86_400
SESSION_TTL = 600
LOCK_KEY = "elevenlabs:lock:purge"
CONVERSATION_INDEX = "elevenlabs:conversations"
UNREACHABLE = "redis://127.0.0.1:1"


# --- helpers --------------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ago(delta: timedelta) -> str:
    return iso(datetime.now(UTC) - delta)


def task_key(task_id: str) -> str:
    return f"cursor_task:{task_id}"


def session_key(conversation_id: str) -> str:
    return f"elevenlabs:session:{conversation_id}"


def conversation_key(conversation_id: str) -> str:
    return f"elevenlabs:conversation:{conversation_id}"


def pending_key(conversation_id: str) -> str:
    return "elevenlabs:pending:{" + conversation_id + "}"


def seed_task(
    client: Any,
    task_id: str,
    *,
    status: str = "pending",
    age: timedelta = timedelta(0),
    ttl: int | None = TASK_TTL,
    conversation_id: str = "conv-a",
) -> str:
    """A `cursor_task:<id>` hash as the service writes it. `client` may be a pipeline."""
    created = ago(age)
    fields = {
        "taskId": task_id,
        "conversationId": conversation_id,
        "toolName": "run_code",
        "toolArgs": orjson.dumps({"prompt": f"do {task_id}"}).decode(),
        "prompt": f"do {task_id}",
        "status": status,
        "createdAt": created,
        "updatedAt": created,
        "tokenHash": "ab" * 32,
    }
    if status != "pending":
        fields.update(
            completedAt=created,
            callbackAt=created,
            result=orjson.dumps({"ok": status == "completed"}).decode(),
            delivery="delivered",
        )
    key = task_key(task_id)
    client.hset(key, mapping=fields)
    if ttl is not None:
        client.expire(key, ttl)
    return key


def seed_session(client: Any, conversation_id: str, *, age: timedelta = timedelta(0), ttl: int = SESSION_TTL) -> str:
    key = session_key(conversation_id)
    client.hset(
        key,
        mapping={
            "conversationId": conversation_id,
            "sessionId": f"sess-{conversation_id}",
            "transport": "relay",
            "registeredAt": ago(age),
            "metadata": "{}",
        },
    )
    client.expire(key, ttl)
    return key


def seed_conversation(client: Any, conversation_id: str, *, age: timedelta = timedelta(0)) -> str:
    """A persistent conversation hash with one message, and its entry in the index zset."""
    created = datetime.now(UTC) - age
    key = conversation_key(conversation_id)
    message = {"role": "user", "content": f"hello from {conversation_id}", "timestamp": iso(created)}
    client.hset(
        key,
        mapping={
            "conversationId": conversation_id,
            "agentId": "agent_test",
            "createdAt": iso(created),
            "lastAccessedAt": iso(created),
            "metadata": "{}",
            "seq": "1",
            "msg:000001": orjson.dumps(message).decode(),
        },
    )
    client.zadd(CONVERSATION_INDEX, {conversation_id: int(created.timestamp() * 1000)})
    return key


def seed_pending(client: Any, conversation_id: str, waiting: dict[str, timedelta]) -> str:
    """`elevenlabs:pending:{<id>}`: taskId -> event JSON whose eventId is '<ms>-0'."""
    key = pending_key(conversation_id)
    now_ms = int(time.time() * 1000)
    for task_id, age in waiting.items():
        event = {"eventId": f"{now_ms - int(age.total_seconds() * 1000)}-0", "taskId": task_id, "status": "completed"}
        client.hset(key, task_id, orjson.dumps(event).decode())
    client.expire(key, TASK_TTL)
    return key


def read_value(client: redis_sync.Redis, key: str, redis_type: str) -> Any:
    if redis_type == "hash":
        return client.hgetall(key)
    if redis_type == "string":
        return client.get(key)
    if redis_type == "zset":
        return client.zrange(key, 0, -1, withscores=True)
    if redis_type == "stream":
        return client.xrange(key)
    if redis_type == "list":
        return client.lrange(key, 0, -1)
    if redis_type == "set":
        return sorted(client.smembers(key))
    raise AssertionError(f"unexpected type {redis_type} for {key}")


def snapshot(client: redis_sync.Redis, pattern: str = "*") -> dict[str, tuple[str, Any, int]]:
    """Every key matching `pattern`: (type, value, remaining TTL in ms)."""
    result = {}
    for key in client.scan_iter(match=pattern, count=1000):
        redis_type = client.type(key)
        result[key] = (redis_type, read_value(client, key, redis_type), client.pttl(key))
    return result


def contents(snap: dict[str, tuple[str, Any, int]]) -> dict[str, tuple[str, Any]]:
    """A snapshot without the TTLs (they tick)."""
    return {key: (t, v) for key, (t, v, _) in snap.items()}


def keys_matching(client: redis_sync.Redis, pattern: str) -> set[str]:
    return set(client.scan_iter(match=pattern, count=1000))


def read_backup(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis_sync.Redis]:
    """A synchronous client on the suite's Redis, emptied first (restarted if a test stopped it)."""
    if not redis_server.running:
        redis_server.start()
    client = redis_sync.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def url(redis_server: RedisServer, store: redis_sync.Redis) -> str:
    return redis_server.url


def seed_mixed(store: redis_sync.Redis) -> dict[str, str]:
    """Tasks of several ages and statuses, sessions and conversations. Returns name -> key."""
    keys = {
        "stuck1": seed_task(store, "t-stuck1", age=timedelta(days=2), conversation_id="conv-a"),
        "stuck2": seed_task(store, "t-stuck2", age=timedelta(hours=30), conversation_id="conv-b"),
        "fresh": seed_task(store, "t-fresh", age=timedelta(minutes=20), conversation_id="conv-a"),
        "old_done": seed_task(store, "t-old-done", status="completed", age=timedelta(days=3)),
        "old_failed": seed_task(store, "t-old-failed", status="failed", age=timedelta(hours=26)),
        "session_a": seed_session(store, "conv-a", age=timedelta(minutes=5)),
        "session_b": seed_session(store, "conv-b", age=timedelta(minutes=1)),
        "conv_a": seed_conversation(store, "conv-a", age=timedelta(days=3)),
        "conv_b": seed_conversation(store, "conv-b", age=timedelta(hours=2)),
    }
    return keys


# --- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("30m", 1800.0),
        ("24h", 86_400.0),
        ("7d", 604_800.0),
        ("1w", 604_800.0),
        ("250ms", 0.25),
        ("0s", 0.0),
        ("1.5h", 5400.0),
        ("45", 45.0),
        (" 2h ", 7200.0),
    ],
)
def test_parse_duration_accepts_operator_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "5x", "-1h", "h", "24 hours", "1e3s"])
def test_parse_duration_rejects_garbage_with_a_readable_message(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration") as excinfo:
        parse_duration(text)
    assert repr(text) in str(excinfo.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (9, "9s"),
        (59.9, "59s"),
        (60, "1m"),
        (250, "4m10s"),
        (3600, "1h"),
        (3 * 3600 + 5 * 60 + 7, "3h5m"),
        (86_400 + 2 * 3600 + 59, "1d2h"),
        (172_800, "2d"),
        (-5, "0s"),
    ],
)
def test_format_duration_shows_the_two_largest_units(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["9s", "4m", "3h", "2d"])
def test_format_duration_round_trips_whole_units(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


# --- stats ----------------------------------------------------------------------------------------


def seed_for_stats(store: redis_sync.Redis) -> None:
    seed_task(store, "t-stuck", age=timedelta(days=2))
    seed_task(store, "t-fresh", age=timedelta(minutes=20))
    seed_task(store, "t-nottl", age=timedelta(minutes=10), ttl=None)
    seed_task(store, "t-done", status="completed", age=timedelta(days=3))
    seed_task(store, "t-failed", status="failed", age=timedelta(hours=1))
    seed_session(store, "conv-a")
    seed_session(store, "conv-b")
    for conversation_id in ("conv-a", "conv-b", "conv-c"):
        seed_conversation(store, conversation_id, age=timedelta(hours=5))
    seed_pending(store, "conv-a", {"t-1": timedelta(minutes=2), "t-2": timedelta(minutes=1), "t-3": timedelta(0)})
    seed_pending(store, "conv-b", {f"t-b{i}": timedelta(seconds=10) for i in range(4)})


def test_stats_json_reports_every_family_with_counts_ttls_and_task_health(url: str, store: redis_sync.Redis) -> None:
    seed_for_stats(store)
    families = {f["family"]: f for f in ok_json(run_cli("stats", "--json", redis_url=url))}

    assert set(families) == {fam.name for fam in KEY_FAMILIES}
    counts = {name: f["count"] for name, f in families.items()}
    assert counts == {
        "sessions": 2,
        "tasks": 5,
        "conversations": 3,
        "conversation_index": 1,
        "conversation_index_last_accessed": 0,
        "conversation_index_message_count": 0,
        "aliases": 0,
        "event_streams": 0,
        "pending_results": 2,
        "locks": 0,
        "rate_limits": 0,
    }
    without_ttl = {name: f["withoutTtl"] for name, f in families.items()}
    assert without_ttl == {
        "sessions": 0,
        "tasks": 1,
        "conversations": 3,
        "conversation_index": 1,
        "conversation_index_last_accessed": 0,
        "conversation_index_message_count": 0,
        "aliases": 0,
        "event_streams": 0,
        "pending_results": 0,
        "locks": 0,
        "rate_limits": 0,
    }
    for name in ("sessions", "tasks", "conversations", "pending_results"):
        assert families[name]["memoryBytesEstimate"] > 0, families[name]
    assert families["aliases"]["memoryBytesEstimate"] == 0

    tasks = families["tasks"]
    assert tasks["byStatus"] == {"pending": 3, "completed": 1, "failed": 1}
    assert tasks["stuckPending"] == 1  # only the one created 2 days ago
    assert tasks["oldestPendingSeconds"] == pytest.approx(2 * 86_400, abs=60)

    pending = families["pending_results"]
    assert pending["resultsWaiting"] == 7
    assert pending["oldestWaitingSeconds"] == pytest.approx(120, abs=30)


def test_stats_json_on_an_empty_redis_is_all_zero(url: str) -> None:
    families = ok_json(run_cli("stats", "--json", redis_url=url))
    assert {f["family"] for f in families} == {fam.name for fam in KEY_FAMILIES}
    assert all(f["count"] == 0 and f["withoutTtl"] == 0 for f in families), families
    tasks = next(f for f in families if f["family"] == "tasks")
    assert tasks["byStatus"] == {} and tasks["stuckPending"] == 0 and tasks["oldestPendingSeconds"] == 0


def test_stats_table_shows_counts_stuck_tasks_and_waiting_results(url: str, store: redis_sync.Redis) -> None:
    seed_for_stats(store)
    out = ok(run_cli("stats", redis_url=url))
    rows = {}
    for line in out.splitlines():
        for fam in KEY_FAMILIES:
            if re.search(rf"[│|]\s*{re.escape(fam.name)}\s*[│|]", line):
                rows[fam.name] = line
    assert set(rows) == {fam.name for fam in KEY_FAMILIES}, out
    cells = {name: [c.strip() for c in re.split(r"[│|]", line)[1:-1]] for name, line in rows.items()}
    # columns: family, pattern, keys, without TTL, memory, notes
    assert cells["tasks"][1] == "cursor_task:*"
    assert (cells["tasks"][2], cells["tasks"][3]) == ("5", "1")
    assert (cells["conversations"][2], cells["conversations"][3]) == ("3", "3")
    assert (cells["sessions"][2], cells["sessions"][3]) == ("2", "0")
    assert re.search(r"stuck\w*\W{0,2}1\b", cells["tasks"][5], re.I), cells["tasks"]
    assert "pending" in cells["tasks"][5] and "3" in cells["tasks"][5], cells["tasks"]
    # SPEC §7: stats shows "counts, ages ... stuck counts" in the human table too, so results waiting
    # for delivery (7 of them in 2 keys) must be visible there, not only in --json.
    assert re.search(r"waiting\w*\W{0,2}7\b", cells["pending_results"][5], re.I), cells["pending_results"]


# --- listings -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tasks_list_filters_by_status_and_age_oldest_first(url: str, store: redis_sync.Redis) -> None:
    seed_mixed(store)

    def task_ids(*args: str) -> list[str]:
        return [row["taskId"] for row in ok_json(run_cli("tasks", "list", "--json", *args, redis_url=url))]

    assert task_ids() == ["t-old-done", "t-stuck1", "t-stuck2", "t-old-failed", "t-fresh"]
    assert task_ids("--status", "pending") == ["t-stuck1", "t-stuck2", "t-fresh"]
    assert task_ids("--status", "completed") == ["t-old-done"]
    assert task_ids("--older-than", "24h") == ["t-old-done", "t-stuck1", "t-stuck2", "t-old-failed"]
    assert task_ids("--status", "pending", "--older-than", "24h") == ["t-stuck1", "t-stuck2"]
    assert task_ids("--status", "pending", "--older-than", "40h") == ["t-stuck1"]
    assert task_ids("--older-than", "7d") == []


def test_tasks_list_json_rows_carry_fields_age_and_ttl(url: str, store: redis_sync.Redis) -> None:
    seed_mixed(store)
    rows = ok_json(run_cli("tasks", "list", "--json", "--status", "pending", "--older-than", "40h", redis_url=url))
    assert len(rows) == 1
    row = rows[0]
    assert row["key"] == "cursor_task:t-stuck1"
    assert row["taskId"] == "t-stuck1"
    assert row["conversationId"] == "conv-a"
    assert row["status"] == "pending"
    assert row["createdAt"] == store.hget("cursor_task:t-stuck1", "createdAt")
    assert row["ageSeconds"] == pytest.approx(2 * 86_400, abs=60)
    assert 0 < row["ttlSeconds"] <= TASK_TTL
    assert "tokenHash" not in row  # listings show, they do not leak the callback token hash


def test_tasks_list_limit_keeps_the_oldest(url: str, store: redis_sync.Redis) -> None:
    with store.pipeline(transaction=False) as pipe:
        for i in range(30):
            seed_task(pipe, f"t-{i:02d}", age=timedelta(hours=i))
        pipe.execute()
    rows = ok_json(run_cli("tasks", "list", "--json", "--limit", "3", redis_url=url))
    assert [r["taskId"] for r in rows] == ["t-29", "t-28", "t-27"]
    default = ok_json(run_cli("tasks", "list", "--json", redis_url=url))
    assert len(default) == 30
    bad = run_cli("tasks", "list", "--limit", "0", redis_url=url)
    assert bad.returncode == 2 and "--limit" in bad.stderr and "Traceback" not in bad.stderr


def test_tasks_list_table_shows_the_matching_tasks(url: str, store: redis_sync.Redis) -> None:
    seed_mixed(store)
    out = ok(run_cli("tasks", "list", "--status", "pending", "--older-than", "24h", redis_url=url))
    assert "t-stuck1" in out and "t-stuck2" in out
    assert "t-fresh" not in out and "t-old-done" not in out and "t-old-failed" not in out
    assert "2d" in out  # the age of the oldest, human-readable


@pytest.mark.slow
def test_sessions_list_shows_live_sessions_with_ttl(url: str, store: redis_sync.Redis) -> None:
    seed_mixed(store)
    rows = ok_json(run_cli("sessions", "list", "--json", redis_url=url))
    assert [r["conversationId"] for r in rows] == ["conv-a", "conv-b"]  # oldest first
    for row in rows:
        assert row["key"] == session_key(row["conversationId"])
        assert row["sessionId"] == f"sess-{row['conversationId']}"
        assert 0 < row["ttlSeconds"] <= SESSION_TTL
    assert rows[0]["ageSeconds"] == pytest.approx(300, abs=30)
    older = ok_json(run_cli("sessions", "list", "--json", "--older-than", "3m", redis_url=url))
    assert [r["conversationId"] for r in older] == ["conv-a"]
    table = ok(run_cli("sessions", "list", redis_url=url))
    assert "conv-a" in table and "conv-b" in table and "sess-conv-a" in table


@pytest.mark.slow
def test_conversations_list_shows_persistent_conversations(url: str, store: redis_sync.Redis) -> None:
    seed_mixed(store)
    seed_conversation(store, "conv-c", age=timedelta(days=10))
    rows = ok_json(run_cli("conversations", "list", "--json", redis_url=url))
    assert [r["conversationId"] for r in rows] == ["conv-c", "conv-a", "conv-b"]
    for row in rows:
        assert row["key"] == conversation_key(row["conversationId"])
        assert row["ttlSeconds"] == -1
        assert row["seq"] == "1"
        assert row["agentId"] == "agent_test"
    assert ok_json(run_cli("conversations", "list", "--json", "--limit", "1", redis_url=url))[0]["conversationId"] == (
        "conv-c"
    )
    table = ok(run_cli("conversations", "list", redis_url=url))
    assert "conv-a" in table and "conv-c" in table and "none" in table  # ttl column: persistent


# --- purge ----------------------------------------------------------------------------------------


def test_tasks_purge_is_a_dry_run_by_default(url: str, store: redis_sync.Redis, tmp_path: Path) -> None:
    keys = seed_mixed(store)
    before = contents(snapshot(store))

    report = ok_json(run_cli("tasks", "purge", "--older-than", "24h", "--status", "pending", "--json", redis_url=url))
    assert report["dryRun"] is True
    assert (report["scanned"], report["matched"], report["deleted"]) == (5, 2, 0)
    assert {s["key"] for s in report["sample"]} == {keys["stuck1"], keys["stuck2"]}
    assert report["backup"] is None
    assert contents(snapshot(store)) == before

    out = ok(run_cli("tasks", "purge", "--older-than", "24h", "--status", "pending", redis_url=url))
    assert "dry run" in out.lower()
    assert re.search(r"\b2 of 5\b", out), out
    assert "--yes" in out
    assert contents(snapshot(store)) == before
    assert not store.exists(LOCK_KEY)


@pytest.mark.slow
def test_tasks_purge_dry_run_with_a_backup_file_still_deletes_nothing(
    url: str, store: redis_sync.Redis, tmp_path: Path
) -> None:
    """--backup names where a real purge would write; without --yes it is still only a dry run."""
    seed_mixed(store)
    before = contents(snapshot(store))
    backup = tmp_path / "dry.jsonl"
    report = ok_json(
        run_cli(
            "tasks", "purge", "--older-than", "24h", "--status", "pending", "--backup", backup, "--json", redis_url=url
        )
    )
    assert report["dryRun"] is True
    assert (report["matched"], report["deleted"]) == (2, 0)
    assert contents(snapshot(store)) == before
    assert not backup.exists() or read_backup(backup) == []
    sessions = ok_json(
        run_cli("sessions", "purge", "--older-than", "0s", "--backup", tmp_path / "s.jsonl", "--json", redis_url=url)
    )
    assert (sessions["dryRun"], sessions["matched"], sessions["deleted"]) == (True, 2, 0)
    assert contents(snapshot(store)) == before


def test_tasks_purge_with_yes_backs_up_then_deletes_only_the_matches(
    url: str, store: redis_sync.Redis, tmp_path: Path
) -> None:
    keys = seed_mixed(store)
    before = snapshot(store)
    backup = tmp_path / "backup.jsonl"

    result = run_cli(
        "tasks", "purge", "--older-than", "24h", "--status", "pending", "--yes", "--backup", backup, redis_url=url
    )
    out = ok(result)
    assert re.search(r"deleted 2 of 2\b", out), out
    assert str(backup) in out
    assert result.stderr == ""  # no progress bar when not on a terminal

    doomed = {keys["stuck1"], keys["stuck2"]}
    records = read_backup(backup)
    assert {r["key"] for r in records} == doomed and len(records) == 2
    for record in records:
        assert set(record) == {"key", "type", "ttl_ms", "value"}
        assert record["type"] == "hash"
        assert record["value"] == before[record["key"]][1]
        assert 0 < record["ttl_ms"] <= TASK_TTL * 1000
        assert abs(record["ttl_ms"] - before[record["key"]][2]) < 5_000

    after = contents(snapshot(store))
    assert after == {k: v for k, v in contents(before).items() if k not in doomed}
    # fresh pending, old completed/failed tasks, sessions and conversations are still there
    for name in ("fresh", "old_done", "old_failed", "session_a", "session_b", "conv_a", "conv_b"):
        assert keys[name] in after
    assert not store.exists(LOCK_KEY)


@pytest.mark.slow
def test_tasks_purge_again_is_harmless(url: str, store: redis_sync.Redis, tmp_path: Path) -> None:
    seed_mixed(store)
    args = ("tasks", "purge", "--older-than", "24h", "--status", "pending", "--yes", "--json")
    first = ok_json(run_cli(*args, "--backup", tmp_path / "one.jsonl", redis_url=url))
    assert (first["matched"], first["deleted"], first["dryRun"]) == (2, 2, False)
    between = contents(snapshot(store))

    second = ok_json(run_cli(*args, "--backup", tmp_path / "two.jsonl", redis_url=url))
    assert (second["matched"], second["deleted"]) == (0, 0)
    assert contents(snapshot(store)) == between
    assert not (tmp_path / "two.jsonl").exists() or read_backup(tmp_path / "two.jsonl") == []
    text = ok(run_cli(*args[:-1], "--backup", tmp_path / "three.jsonl", redis_url=url))
    assert re.search(r"deleted 0 of 0\b", text), text
    assert len(read_backup(tmp_path / "one.jsonl")) == 2  # the first backup is intact


def test_tasks_purge_yes_without_backup_writes_a_default_file_under_the_state_dir(
    url: str, store: redis_sync.Redis, tmp_path: Path
) -> None:
    keys = seed_mixed(store)
    out = ok(run_cli("tasks", "purge", "--older-than", "24h", "--yes", redis_url=url, cwd=tmp_path))
    files = list(tmp_path.rglob("*.jsonl"))
    assert len(files) == 1, files
    assert files[0].parent == tmp_path / ".elevenlabs-agent" / "backups"  # ignored by git, not the cwd
    assert re.fullmatch(r"elevenlabs-agent-backup-tasks-\d{8}T\d{6}Z\.jsonl", files[0].name), files[0].name
    assert str(files[0].relative_to(tmp_path)) in out
    deleted = {keys["stuck1"], keys["stuck2"], keys["old_done"], keys["old_failed"]}
    assert {r["key"] for r in read_backup(files[0])} == deleted
    assert keys_matching(store, "cursor_task:*") == {keys["fresh"]}


def test_sessions_purge_older_than_uses_the_registration_time(
    url: str, store: redis_sync.Redis, tmp_path: Path
) -> None:
    keys = seed_mixed(store)
    backup = tmp_path / "sessions.jsonl"
    report = ok_json(
        run_cli("sessions", "purge", "--older-than", "3m", "--yes", "--backup", backup, "--json", redis_url=url)
    )
    assert (report["matched"], report["deleted"]) == (1, 1)
    assert [r["key"] for r in read_backup(backup)] == [keys["session_a"]]
    assert keys_matching(store, "elevenlabs:session:*") == {keys["session_b"]}
    assert len(keys_matching(store, "cursor_task:*")) == 5


def test_purging_everything_never_touches_conversations(url: str, store: redis_sync.Redis, tmp_path: Path) -> None:
    seed_mixed(store)
    for i in range(5):
        seed_conversation(store, f"conv-extra-{i}", age=timedelta(days=i))
        seed_session(store, f"conv-extra-{i}", age=timedelta(seconds=i))
        seed_task(store, f"t-extra-{i}", age=timedelta(seconds=i), conversation_id=f"conv-extra-{i}")
    seed_pending(store, "conv-a", {"t-fresh": timedelta(seconds=5)})
    store.xadd("elevenlabs:events:{conv-a}", {"taskId": "t-fresh", "data": "{}"})
    store.expire("elevenlabs:events:{conv-a}", TASK_TTL)
    before = snapshot(store)
    others = {k: v for k, v in contents(before).items() if not k.startswith(("cursor_task:", "elevenlabs:session:"))}
    assert sum(k.startswith("elevenlabs:conversation:") for k in others) == 7

    tasks = ok_json(
        run_cli(
            "tasks", "purge", "--older-than", "0s", "--yes", "--backup", tmp_path / "t.jsonl", "--json", redis_url=url
        )
    )
    sessions = ok_json(
        run_cli(
            "sessions",
            "purge",
            "--older-than",
            "0s",
            "--yes",
            "--backup",
            tmp_path / "s.jsonl",
            "--json",
            redis_url=url,
        )
    )
    assert tasks["deleted"] == 10 and sessions["deleted"] == 7

    assert keys_matching(store, "cursor_task:*") == set()
    assert keys_matching(store, "elevenlabs:session:*") == set()
    after = snapshot(store)
    assert contents(after) == others
    for key in keys_matching(store, "elevenlabs:conversation*"):
        assert store.ttl(key) == -1, key  # still persistent
    assert store.zcard(CONVERSATION_INDEX) == 7


def test_purge_writes_the_backup_before_deleting(url: str, store: redis_sync.Redis) -> None:
    """A backup that cannot be written (disk full) must leave every key in place."""
    seed_mixed(store)
    before = contents(snapshot(store))
    result = run_cli("tasks", "purge", "--older-than", "0s", "--yes", "--backup", "/dev/full", redis_url=url)
    line = assert_one_error_line(result, code=None)
    assert contents(snapshot(store)) == before
    assert not store.exists(LOCK_KEY)  # the lease was released on the way out
    # The problem is the backup file, and the line must say so: Redis was perfectly reachable.
    assert "cannot reach redis" not in line.lower(), line
    assert "backup" in line.lower() or "/dev/full" in line, line


def test_purge_with_a_backup_in_a_missing_directory_deletes_nothing(
    url: str, store: redis_sync.Redis, tmp_path: Path
) -> None:
    seed_mixed(store)
    before = contents(snapshot(store))
    target = tmp_path / "no-such-dir" / "backup.jsonl"
    result = run_cli("tasks", "purge", "--older-than", "0s", "--yes", "--backup", target, redis_url=url)
    line = assert_one_error_line(result, code=None)
    assert contents(snapshot(store)) == before
    assert not store.exists(LOCK_KEY)
    assert "cannot reach redis" not in line.lower(), line
    assert str(target) in line or "backup" in line.lower(), line


# --- restore --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_backup_purge_restore_gives_back_identical_keys_values_and_ttls(
    url: str, store: redis_sync.Redis, tmp_path: Path
) -> None:
    seed_mixed(store)
    seed_task(store, "t-short", age=timedelta(hours=2), ttl=5_000)
    seed_task(store, "t-forever", age=timedelta(days=5), ttl=None)
    original = snapshot(store)
    snapped = time.monotonic()
    assert original["cursor_task:t-forever"][2] == -1

    task_backup, session_backup = tmp_path / "tasks.jsonl", tmp_path / "sessions.jsonl"
    ok(run_cli("tasks", "purge", "--older-than", "0s", "--yes", "--backup", task_backup, redis_url=url))
    ok(run_cli("sessions", "purge", "--older-than", "0s", "--yes", "--backup", session_backup, redis_url=url))
    assert keys_matching(store, "cursor_task:*") == set() and keys_matching(store, "elevenlabs:session:*") == set()
    assert len(read_backup(task_backup)) == 7 and len(read_backup(session_backup)) == 2

    # dry run first: nothing comes back
    dry = ok(run_cli("restore", task_backup, redis_url=url))
    assert "dry run" in dry.lower() and re.search(r"\b7 of 7\b", dry), dry
    assert keys_matching(store, "cursor_task:*") == set()

    for backup, count in ((task_backup, 7), (session_backup, 2)):
        report = ok_json(run_cli("restore", backup, "--yes", "--json", redis_url=url))
        assert report == {"dryRun": False, "read": count, "restored": count, "skippedExisting": 0}

    restored = snapshot(store)
    elapsed_ms = (time.monotonic() - snapped) * 1000
    assert contents(restored) == contents(original)
    # each key gets back the remaining TTL its backup recorded (to within the time since the restore) ...
    for record in read_backup(task_backup) + read_backup(session_backup):
        ttl = restored[record["key"]][2]
        if record["ttl_ms"] == -1:
            assert ttl == -1, record["key"]
        else:
            assert record["ttl_ms"] - 2_000 <= ttl <= record["ttl_ms"], (record["key"], record["ttl_ms"], ttl)
    # ... so it never lives longer than it would have, and loses no more than the time the round trip took
    for key, (_, _, ttl) in original.items():
        if ttl == -1:
            assert restored[key][2] == -1, key
        else:
            assert ttl - elapsed_ms - 1_000 <= restored[key][2] <= ttl, (key, ttl, restored[key][2], elapsed_ms)


def test_restore_is_a_dry_run_by_default(url: str, store: redis_sync.Redis, tmp_path: Path) -> None:
    backup = tmp_path / "b.jsonl"
    records = [
        {"key": task_key(f"t-{i}"), "type": "hash", "ttl_ms": 60_000, "value": {"status": "pending"}} for i in range(3)
    ]
    backup.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    report = ok_json(run_cli("restore", backup, "--json", redis_url=url))
    assert report == {"dryRun": True, "read": 3, "restored": 3, "skippedExisting": 0}
    assert store.dbsize() == 0
    assert "dry run" in ok(run_cli("restore", backup, redis_url=url)).lower()
    assert store.dbsize() == 0


def test_restore_handles_every_key_type(url: str, store: redis_sync.Redis, tmp_path: Path) -> None:
    records = [
        {"key": "elevenlabs:alias:x1", "type": "string", "ttl_ms": 120_000, "value": "conv-a"},
        {"key": "elevenlabs:conversations", "type": "zset", "ttl_ms": -1, "value": [["conv-a", 1.0], ["conv-b", 2.0]]},
        {
            "key": "elevenlabs:events:{conv-a}",
            "type": "stream",
            "ttl_ms": 300_000,
            "value": [["1700000000000-0", {"taskId": "t1", "data": "{}"}], ["1700000000001-0", {"taskId": "t2"}]],
        },
        {"key": "elevenlabs:test:list", "type": "list", "ttl_ms": -1, "value": ["a", "b", "a"]},
        {"key": "elevenlabs:test:set", "type": "set", "ttl_ms": 90_000, "value": ["x", "y"]},
        {"key": "cursor_task:t1", "type": "hash", "ttl_ms": 3_600_000, "value": {"taskId": "t1", "status": "pending"}},
    ]
    backup = tmp_path / "types.jsonl"
    backup.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    report = ok_json(run_cli("restore", backup, "--yes", "--json", redis_url=url))
    assert report["restored"] == 6

    assert store.get("elevenlabs:alias:x1") == "conv-a"
    assert store.zrange("elevenlabs:conversations", 0, -1, withscores=True) == [("conv-a", 1.0), ("conv-b", 2.0)]
    assert store.xrange("elevenlabs:events:{conv-a}") == [
        ("1700000000000-0", {"taskId": "t1", "data": "{}"}),
        ("1700000000001-0", {"taskId": "t2"}),
    ]
    assert store.lrange("elevenlabs:test:list", 0, -1) == ["a", "b", "a"]
    assert store.smembers("elevenlabs:test:set") == {"x", "y"}
    assert store.hgetall("cursor_task:t1") == {"taskId": "t1", "status": "pending"}
    for record in records:
        ttl = store.pttl(record["key"])
        if record["ttl_ms"] == -1:
            assert ttl == -1, record["key"]
        else:
            assert record["ttl_ms"] - 5_000 < ttl <= record["ttl_ms"], (record["key"], ttl)


@pytest.mark.slow
def test_restore_leaves_existing_keys_alone_unless_forced(url: str, store: redis_sync.Redis, tmp_path: Path) -> None:
    seed_task(store, "t-1", age=timedelta(days=2))
    seed_task(store, "t-2", age=timedelta(days=2))
    original = snapshot(store)
    backup = tmp_path / "b.jsonl"
    ok(run_cli("tasks", "purge", "--older-than", "24h", "--yes", "--backup", backup, redis_url=url))
    assert store.dbsize() == 0

    # meanwhile the service wrote t-1 again
    store.hset("cursor_task:t-1", mapping={"taskId": "t-1", "status": "completed"})
    store.expire("cursor_task:t-1", 100)
    newer = store.hgetall("cursor_task:t-1")

    dry = ok_json(run_cli("restore", backup, "--json", redis_url=url))
    assert dry == {"dryRun": True, "read": 2, "restored": 1, "skippedExisting": 1}
    out = ok(run_cli("restore", backup, "--yes", redis_url=url))
    assert re.search(r"restored 1 of 2\b", out) and "1 existed" in out, out
    assert store.hgetall("cursor_task:t-1") == newer  # not overwritten
    assert 0 < store.ttl("cursor_task:t-1") <= 100
    assert store.hgetall("cursor_task:t-2") == original["cursor_task:t-2"][1]

    forced = ok_json(run_cli("restore", backup, "--yes", "--force", "--json", redis_url=url))
    assert forced == {"dryRun": False, "read": 2, "restored": 2, "skippedExisting": 0}
    assert store.hgetall("cursor_task:t-1") == original["cursor_task:t-1"][1]  # no stale "completed" fields left
    assert abs(store.pttl("cursor_task:t-1") - original["cursor_task:t-1"][2]) <= 2_000


GOOD_LINE = orjson.dumps(
    {"key": "cursor_task:ok", "type": "hash", "ttl_ms": 60_000, "value": {"taskId": "ok", "status": "pending"}}
).decode()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("this is not json\n", id="garbage"),
        pytest.param(GOOD_LINE + "\n{not json\n", id="good-then-garbage"),
        pytest.param('{"key": "cursor_task:x", "type": "hash"}\n', id="missing-fields"),
        pytest.param("[1, 2, 3]\n", id="array"),
        pytest.param('"just a string"\n', id="string"),
        pytest.param('{"key": "cursor_task:x", "type": "teapot", "ttl_ms": -1, "value": "x"}\n', id="unknown-type"),
        pytest.param(
            '{"key": "cursor_task:x", "type": "hash", "ttl_ms": "soon", "value": {"a": "b"}}\n', id="ttl-not-a-number"
        ),
        pytest.param(
            '{"key": "cursor_task:x", "type": "hash", "ttl_ms": -1, "value": "not a mapping"}\n', id="value-wrong-shape"
        ),
        pytest.param(b"\xff\xfe\x00garbage\n", id="binary"),
    ],
)
def test_restore_rejects_a_malformed_backup_with_one_clear_line(
    url: str, store: redis_sync.Redis, tmp_path: Path, text: str | bytes
) -> None:
    backup = tmp_path / "bad.jsonl"
    if isinstance(text, bytes):
        backup.write_bytes(text)
    else:
        backup.write_text(text)
    result = run_cli("restore", backup, "--yes", redis_url=url)
    line = assert_one_error_line(result, code=None)
    assert "backup" in line.lower() or str(backup) in line, line
    assert store.dbsize() == 0  # nothing half-restored


def test_restore_of_a_missing_file_is_a_usage_error(url: str, tmp_path: Path) -> None:
    result = run_cli("restore", tmp_path / "nope.jsonl", redis_url=url)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nope.jsonl" in result.stderr and "does not exist" in result.stderr


# --- the purge lease ------------------------------------------------------------------------------


@pytest.mark.slow
def test_purge_refuses_while_another_holds_the_lock(url: str, store: redis_sync.Redis, tmp_path: Path) -> None:
    keys = seed_mixed(store)
    before = contents(snapshot(store, "cursor_task:*"))
    store.set(LOCK_KEY, "someone-else", px=30_000)
    backup = tmp_path / "locked.jsonl"

    result = run_cli("tasks", "purge", "--older-than", "24h", "--yes", "--backup", backup, redis_url=url)
    line = assert_one_error_line(result)
    assert LOCK_KEY in line and "another purge" in line, line
    assert contents(snapshot(store, "cursor_task:*")) == before
    assert not backup.exists() or read_backup(backup) == []
    assert store.get(LOCK_KEY) == "someone-else"  # not stolen, not released by the loser
    assert 0 < store.pttl(LOCK_KEY) <= 30_000

    sessions = run_cli("sessions", "purge", "--older-than", "0s", "--yes", "--backup", backup, redis_url=url)
    assert_one_error_line(sessions)
    assert len(keys_matching(store, "elevenlabs:session:*")) == 2

    # a dry run only reads: it still works while a purge runs
    assert "dry run" in ok(run_cli("tasks", "purge", "--older-than", "24h", redis_url=url)).lower()

    store.delete(LOCK_KEY)
    report = ok_json(
        run_cli("tasks", "purge", "--older-than", "24h", "--yes", "--backup", backup, "--json", redis_url=url)
    )
    assert report["deleted"] == 4
    assert keys_matching(store, "cursor_task:*") == {keys["fresh"]}
    assert not store.exists(LOCK_KEY)


# --- errors ---------------------------------------------------------------------------------------


def redis_commands(tmp_path: Path) -> list[list[str]]:
    backup = tmp_path / "restore-me.jsonl"
    backup.write_text(GOOD_LINE + "\n")
    return [
        ["stats"],
        ["stats", "--json"],
        ["tasks", "list"],
        ["tasks", "list", "--json", "--status", "pending", "--older-than", "24h"],
        ["sessions", "list"],
        ["conversations", "list"],
        ["tasks", "purge", "--older-than", "24h"],
        ["tasks", "purge", "--older-than", "24h", "--yes", "--backup", str(tmp_path / "b.jsonl")],
        ["sessions", "purge", "--older-than", "0s"],
        ["restore", str(backup)],
        ["restore", str(backup), "--yes"],
    ]


@pytest.mark.slow
def test_unreachable_redis_is_one_error_line(tmp_path: Path) -> None:
    for args in redis_commands(tmp_path):
        result = run_cli(*args, "--redis-url", UNREACHABLE, timeout=30)
        line = assert_one_error_line(result, code=1)
        assert "redis" in line.lower(), (args, line)
        assert result.stdout == "", (args, result.stdout)


def test_unreachable_redis_from_the_environment_is_one_error_line(tmp_path: Path) -> None:
    result = run_cli("stats", redis_url=UNREACHABLE, timeout=30)
    assert "redis" in assert_one_error_line(result, code=1).lower()


def test_a_stopped_redis_server_is_one_error_line(redis_server: RedisServer, store: redis_sync.Redis) -> None:
    redis_server.stop()
    try:
        result = run_cli("tasks", "list", redis_url=redis_server.url, timeout=30)
    finally:
        redis_server.start()
    assert "redis" in assert_one_error_line(result, code=1).lower()


@pytest.mark.slow
def test_no_redis_url_at_all_is_one_clear_line(tmp_path: Path) -> None:
    for args in redis_commands(tmp_path):
        result = run_cli(*args, redis_url=None, cwd=tmp_path, timeout=30)  # no local instance there
        line = assert_one_error_line(result, code=None)
        assert "--redis-url" in line or "REDIS_URL" in line, (args, line)


@pytest.mark.parametrize("bad_url", ["not-a-url", "http://127.0.0.1:6379/0", "redis://127.0.0.1:notaport"])
def test_a_malformed_redis_url_is_one_clear_line(bad_url: str) -> None:
    for args in (["stats"], ["tasks", "list"], ["tasks", "purge", "--older-than", "1h"]):
        result = run_cli(*args, "--redis-url", bad_url, timeout=30)
        assert_one_error_line(result, code=None)


@pytest.mark.parametrize("value", ["5x", "yesterday", "-1h", ""])
def test_a_bad_older_than_is_a_usage_error(url: str, store: redis_sync.Redis, value: str) -> None:
    seed_mixed(store)
    before = contents(snapshot(store))
    for args in (
        ["tasks", "list"],
        ["sessions", "list"],
        ["tasks", "purge", "--yes"],
        ["sessions", "purge", "--yes"],
    ):
        result = run_cli(*args, "--older-than", value, redis_url=url, timeout=30)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.stderr
        assert "--older-than" in errors[0] and "not a duration" in errors[0], errors[0]
    assert contents(snapshot(store)) == before


def test_purge_requires_older_than(url: str, store: redis_sync.Redis) -> None:
    seed_mixed(store)
    result = run_cli("tasks", "purge", "--yes", redis_url=url, timeout=30)
    assert result.returncode == 2
    assert "--older-than" in result.stderr and "Traceback" not in result.stderr
    assert len(keys_matching(store, "cursor_task:*")) == 5


# --- how the CLI uses Redis -----------------------------------------------------------------------


def command_calls(client: redis_sync.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


@pytest.mark.slow
def test_commands_scan_and_unlink_never_keys(url: str, store: redis_sync.Redis, tmp_path: Path) -> None:
    seed_mixed(store)
    store.config_resetstat()
    backup = tmp_path / "b.jsonl"
    for args in (
        ["stats"],
        ["tasks", "list"],
        ["sessions", "list"],
        ["conversations", "list"],
        ["tasks", "purge", "--older-than", "0s"],
        ["tasks", "purge", "--older-than", "0s", "--yes", "--backup", str(backup)],
        ["restore", str(backup), "--yes"],
    ):
        ok(run_cli(*args, redis_url=url))
    calls = command_calls(store)
    assert "keys" not in calls, calls
    assert calls.get("scan", 0) > 0
    assert calls.get("unlink", 0) >= 1


@pytest.mark.slow
def test_purging_20000_tasks_is_batched_and_never_slow(url: str, store: redis_sync.Redis, tmp_path: Path) -> None:
    total = 20_000
    with store.pipeline(transaction=False) as pipe:
        for i in range(total):
            seed_task(pipe, f"bulk-{i:05d}", age=timedelta(days=2), conversation_id=f"conv-{i % 50}")
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()
    seed_task(store, "keep-fresh", age=timedelta(minutes=1))
    seed_conversation(store, "conv-keep")
    assert store.dbsize() == total + 3

    original = store.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
    store.config_set("slowlog-log-slower-than", 10_000)
    try:
        store.slowlog_reset()
        store.config_resetstat()
        backup = tmp_path / "bulk.jsonl"
        started = time.monotonic()
        report = ok_json(
            run_cli(
                "tasks", "purge", "--older-than", "24h", "--status", "pending", "--yes", "--backup", backup, "--json",
                redis_url=url,
                timeout=300,
            )
        )  # fmt: skip
        elapsed = time.monotonic() - started
        slow = store.slowlog_get(128)
        calls = command_calls(store)
    finally:
        store.config_set("slowlog-log-slower-than", original)

    assert (report["matched"], report["deleted"]) == (total, total)
    assert keys_matching(store, "cursor_task:*") == {"cursor_task:keep-fresh"}
    assert store.exists(conversation_key("conv-keep"))
    assert not store.exists(LOCK_KEY)

    lines = backup.read_text().splitlines()
    assert len(lines) == total
    keys = {orjson.loads(line)["key"] for line in lines}
    assert keys == {task_key(f"bulk-{i:05d}") for i in range(total)}

    assert slow == [], [(entry["duration"], entry["command"][:80]) for entry in slow]
    assert "keys" not in calls, calls
    assert 2 <= calls.get("unlink", 0) <= 200, calls  # batched: neither one giant UNLINK nor one per key
    assert calls.get("del", 0) <= 1, calls  # keys go by UNLINK; at most the lease's own release uses DEL
    assert elapsed < 120, elapsed
