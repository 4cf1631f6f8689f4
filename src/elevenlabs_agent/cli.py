"""The `elevenlabs-agent` command line (SPEC §7).

Every command that talks to Redis takes `--redis-url` (default: REDIS_URL, else the local instance
that `serve --local` recorded under `.elevenlabs-agent/`), prints a table by default and JSON with
`--json`, and exits non-zero with one clear line on error.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from elevenlabs_agent import __version__

if TYPE_CHECKING:
    from elevenlabs_agent.settings import Settings

T = TypeVar("T")


def _settings() -> Settings:
    # Imported here: the ops commands start fast without pydantic-settings and structlog.
    from pydantic import ValidationError

    from elevenlabs_agent import logging as agent_logging
    from elevenlabs_agent.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"invalid configuration: {problems}") from None
    agent_logging.configure(settings.log_level, settings.secret_values, settings.log_format)
    return settings


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from elevenlabs_agent.ops.durations import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


redis_url_option = click.option(
    "--redis-url",
    envvar="REDIS_URL",
    help="Redis URL: redis://, redis+cluster:// or redis+sentinel:// "
    "(default: $REDIS_URL, else the local instance's, recorded in .elevenlabs-agent/redis.url).",
    metavar="URL",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _run(redis_url: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(redis)` against Redis, turning connection trouble into one clear line."""
    from redis.exceptions import RedisClusterException, RedisError

    from elevenlabs_agent.redis.clients import open_redis

    url = _require_url(redis_url)
    local = not redis_url
    try:
        # One server, a Redis Cluster (redis+cluster://) or a Sentinel master (redis+sentinel://).
        redis = open_redis(url, decode_responses=True, socket_connect_timeout=3, socket_timeout=30)
    except (ValueError, RedisClusterException) as exc:
        raise click.ClickException(f"invalid Redis URL: {exc}") from None

    async def main() -> T:
        try:
            return await work(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(main())
    except (RedisError, RedisClusterException) as exc:
        hint = " (the local instance's Redis, recorded at its last start: is ./scripts/run running?)" if local else ""
        raise click.ClickException(f"Redis error: {exc}{hint}") from None


def _require_url(redis_url: str | None) -> str:
    from elevenlabs_agent.local import recorded_redis_url

    url = redis_url or recorded_redis_url()
    if not url:
        raise click.ClickException(
            "no Redis to talk to: pass --redis-url, set REDIS_URL, or start the local instance (./scripts/run)"
        )
    return url


def _print_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    # emoji=False: rich would render the `:lock:` in `elevenlabs:lock:*` as an emoji.
    console = Console(emoji=False)
    if not console.is_terminal:  # piped into a file or grep: do not squeeze columns to 80 characters
        console = Console(width=200, emoji=False)
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


@contextmanager
def _progress(label: str) -> Iterator[Callable[[Any], None] | None]:
    """A live progress line on a terminal; nothing when output goes to a pipe or file."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(label)

        def update(report: Any) -> None:
            d = report.as_dict()
            counts = ", ".join(f"{k} {v}" for k, v in d.items() if isinstance(v, int) and not isinstance(v, bool))
            bar.update(task, description=f"{label}: {counts}")

        yield update


@click.group()
@click.version_option(__version__, prog_name="elevenlabs-agent")
def main() -> None:
    """elevenlabs-agent: ElevenLabs server tools -> cursor-runner -> results into live conversations."""


@main.command()
@click.option(
    "--local",
    is_flag=True,
    help="Local mode (./scripts/run): fill in what is unset - embedded Redis at a recorded address, a generated "
    "webhook secret, the simulated cursor-runner - and print a tool call to try.",
)
@click.option("--worker-fd", type=int, hidden=True, help="Internal: serve on this inherited socket (WORKERS > 1).")
@click.option("--supervisor-pid", type=int, hidden=True, help="Internal: stop when this parent is gone.")
@click.option("--metrics-fd", type=int, hidden=True, help="Internal: METRICS_PORT's inherited socket.")
def serve(local: bool, worker_fd: int | None, supervisor_pid: int | None, metrics_fd: int | None) -> None:
    """Run the service (embedded Redis when REDIS_URL is unset; WORKERS processes)."""
    from elevenlabs_agent.serve import PortInUse, listen, run

    if not local or worker_fd is not None:
        try:
            run(_settings(), worker_fd, supervisor_pid, metrics_fd=metrics_fd)
        except PortInUse as exc:
            raise click.ClickException(str(exc)) from None
        return

    from elevenlabs_agent.local import apply_defaults, local_environment

    apply_defaults()
    try:
        listener = listen(_settings())
    except PortInUse as exc:
        raise click.ClickException(str(exc)) from None
    with local_environment(say=lambda text: click.echo(text, err=True), terminal=sys.stderr.isatty()):
        run(_settings(), listener=listener)


@main.command()
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the result.")
def demo(timeout: float) -> None:
    """One full round trip on this machine with no outside service; exit 0 on success."""
    from elevenlabs_agent.demo import run_demo

    ok = asyncio.run(run_demo(timeout, echo=click.echo))
    sys.exit(0 if ok else 1)


@main.command()
@click.option(
    "--url",
    default=lambda: f"http://127.0.0.1:{os.environ.get('PORT', '3004')}",
    show_default="local PORT",
    help="Base URL of the instance.",
)
@click.option("--timeout", default=3.0, show_default=True, help="Seconds before giving up.")
@json_option
def health(url: str, timeout: float, as_json: bool) -> None:
    """Probe a running instance: exit 0 when it is ready (Redis answers, not draining), else 1."""
    import httpx

    base = url.rstrip("/")
    try:
        ready = httpx.get(base + "/ready", timeout=timeout)
        body = ready.json()
    except (httpx.HTTPError, ValueError) as exc:
        body, healthy, line = (
            {"error": type(exc).__name__},
            False,
            f"unhealthy: {base} did not answer ({type(exc).__name__})",
        )
    else:
        healthy = ready.status_code == 200
        redis_check = body.get("checks", {}).get("redis:ping", [{}])[0]
        draining = body.get("checks", {}).get("service:draining", [{}])[0].get("observedValue")
        line = (
            f"{'healthy' if healthy else 'unhealthy'}: {base} ready={ready.status_code} "
            f"redis={redis_check.get('status')} ({redis_check.get('observedValue')} ms) draining={draining}"
        )
    if as_json:
        _print_json({"healthy": healthy, "url": base, "ready": body})
    else:
        click.echo(line)
    sys.exit(0 if healthy else 1)


@main.command()
@redis_url_option
@json_option
def stats(redis_url: str | None, as_json: bool) -> None:
    """Counts, TTL-less keys and estimated memory per key family; stuck task counts."""
    from elevenlabs_agent.ops.inspect import all_stats

    families = [s.as_dict() for s in _run(redis_url, all_stats)]
    if as_json:
        _print_json(families)
        return
    _table(
        "elevenlabs-agent keys",
        ["family", "pattern", "keys", "without TTL", "memory (est.)", "notes"],
        [
            [
                f["family"],
                f["pattern"],
                f["count"],
                f["withoutTtl"],
                f"{f['memoryBytesEstimate']:,} B",
                _family_notes(f),
            ]
            for f in families
        ],
    )


def _family_notes(stats: dict[str, Any]) -> str:
    from elevenlabs_agent.ops.durations import format_duration

    if "resultsWaiting" in stats:
        return f"waiting {stats['resultsWaiting']}, oldest {format_duration(stats['oldestWaitingSeconds'])}"
    if "byStatus" not in stats:
        return ""
    counts = " ".join(f"{k}={v}" for k, v in sorted(stats["byStatus"].items()))
    return f"{counts}; oldest pending {format_duration(stats['oldestPendingSeconds'])}; stuck {stats['stuckPending']}"


def _list(name: str, redis_url: str | None, as_json: bool, columns: list[str], **filters: Any) -> None:
    from elevenlabs_agent.ops.durations import format_duration
    from elevenlabs_agent.ops.inspect import list_family

    rows = _run(redis_url, lambda redis: list_family(redis, name, **filters))
    if as_json:
        _print_json(rows)
        return
    _table(
        f"{name} ({len(rows)} shown, oldest first)",
        [*columns, "age", "ttl"],
        [
            [
                *(r.get(c) for c in columns),
                format_duration(r["ageSeconds"]) if r["ageSeconds"] is not None else "?",
                "none" if r["ttlSeconds"] == -1 else format_duration(r["ttlSeconds"]),
            ]
            for r in rows
        ],
    )


older_than_option = click.option("--older-than", callback=_duration, metavar="DUR", help="e.g. 30m, 24h, 7d.")
limit_option = click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))


@main.group()
def sessions() -> None:
    """Live session registrations (elevenlabs:session:*)."""


@sessions.command("list")
@redis_url_option
@json_option
@older_than_option
@limit_option
def sessions_list(redis_url: str | None, as_json: bool, older_than: float | None, limit: int) -> None:
    """List live sessions."""
    _list(
        "sessions",
        redis_url,
        as_json,
        ["conversationId", "sessionId", "transport", "lastTaskId"],
        older_than=older_than,
        limit=limit,
    )


@main.group()
def tasks() -> None:
    """Dispatched tasks (cursor_task:*)."""


@tasks.command("list")
@redis_url_option
@json_option
@click.option("--status", type=click.Choice(["pending", "completed", "failed"]))
@older_than_option
@limit_option
def tasks_list(redis_url: str | None, as_json: bool, status: str | None, older_than: float | None, limit: int) -> None:
    """List tasks, e.g. the stuck ones: --status pending --older-than 1h."""
    _list(
        "tasks",
        redis_url,
        as_json,
        ["taskId", "conversationId", "status", "delivery"],
        status=status,
        older_than=older_than,
        limit=limit,
    )


@main.group()
def conversations() -> None:
    """Conversations (elevenlabs:conversation:*), persistent."""


@conversations.command("list")
@redis_url_option
@json_option
@limit_option
def conversations_list(redis_url: str | None, as_json: bool, limit: int) -> None:
    """List conversations."""
    _list("conversations", redis_url, as_json, ["conversationId", "agentId", "seq", "lastAccessedAt"], limit=limit)


def _purge(
    name: str,
    redis_url: str | None,
    as_json: bool,
    older_than: float,
    status: str | None,
    backup: Path | None,
    yes: bool,
) -> None:
    from elevenlabs_agent.ops.purge import BackupFailed, PurgeFilter, purge
    from elevenlabs_agent.stores import family
    from elevenlabs_agent.stores.locks import LockBusy

    if yes and backup is None:
        from elevenlabs_agent.local import BACKUPS_DIR, state_dir

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        backup = state_dir() / BACKUPS_DIR / f"elevenlabs-agent-backup-{name}-{stamp}.jsonl"
        backup.parent.mkdir(parents=True, exist_ok=True)
    flt = PurgeFilter(older_than=older_than, status=status)
    url = _require_url(redis_url)
    with _progress(f"purging {name}" if yes else f"scanning {name}") as progress:
        try:
            report = _run(
                redis_url,
                lambda redis: purge(redis, url, family(name), flt, execute=yes, backup=backup, progress=progress),
            )
        except (LockBusy, BackupFailed) as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(report.as_dict())
        return
    if yes:
        click.echo(
            f"deleted {report.deleted} of {report.matched} matching {name} keys ({report.scanned} scanned); "
            f"backup: {report.backup}"
        )
    else:
        click.echo(
            f"dry run: {report.matched} of {report.scanned} {name} keys would be deleted; "
            "re-run with --yes to back them up and delete them"
        )


def _purge_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option("--yes", is_flag=True, help="Really delete (after writing the backup).")(command)
    command = click.option(
        "--backup",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="Backup file (JSON lines); default: .elevenlabs-agent/backups/"
        "elevenlabs-agent-backup-<family>-<time>.jsonl",
    )(command)
    command = click.option(
        "--older-than",
        callback=_duration,
        required=True,
        metavar="DUR",
        help="Only keys at least this old, e.g. 24h (0s = all).",
    )(command)
    return json_option(redis_url_option(command))


@tasks.command("purge")
@_purge_options
@click.option("--status", type=click.Choice(["pending", "completed", "failed"]))
def tasks_purge(
    redis_url: str | None, as_json: bool, older_than: float, status: str | None, backup: Path | None, yes: bool
) -> None:
    """Delete stuck tasks: dry run unless --yes; backup first."""
    _purge("tasks", redis_url, as_json, older_than, status, backup, yes)


@sessions.command("purge")
@_purge_options
def sessions_purge(redis_url: str | None, as_json: bool, older_than: float, backup: Path | None, yes: bool) -> None:
    """Delete stuck session registrations: dry run unless --yes; backup first."""
    _purge("sessions", redis_url, as_json, older_than, None, backup, yes)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@redis_url_option
@json_option
@click.option("--yes", is_flag=True, help="Really write (otherwise a dry run).")
@click.option("--force", is_flag=True, help="Overwrite keys that exist.")
def restore(file: Path, redis_url: str | None, as_json: bool, yes: bool, force: bool) -> None:
    """Put back what a backup holds, with its recorded remaining TTLs."""
    from elevenlabs_agent.ops.restore import BackupFormatError
    from elevenlabs_agent.ops.restore import restore as do_restore

    with _progress("restoring" if yes else "checking") as progress:
        try:
            report = _run(redis_url, lambda redis: do_restore(redis, file, execute=yes, force=force, progress=progress))
        except BackupFormatError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(report.as_dict())
    elif yes:
        click.echo(
            f"restored {report.restored} of {report.read} keys; {report.skipped_existing} existed and were left alone"
        )
    else:
        click.echo(
            f"dry run: {report.restored} of {report.read} keys would be restored, "
            f"{report.skipped_existing} exist already (use --force to overwrite); re-run with --yes"
        )


# --- the callback spool (issue 13) ------------------------------------------------------------------

spool_dir_option = click.option(
    "--dir",
    "spool_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Spool directory (default: CALLBACK_SPOOL_DIR, else spool/ under EMBEDDED_REDIS_DIR).",
)


@main.group()
def spool() -> None:
    """Callbacks journaled locally while Redis was unreachable (replayed by the service by itself)."""


def _spool_directory(spool_dir: Path | None) -> Path:
    return spool_dir.resolve() if spool_dir is not None else _settings().spool_directory


@spool.command("status")
@spool_dir_option
@json_option
def spool_status(spool_dir: Path | None, as_json: bool) -> None:
    """What waits in the spool, per slot (one slot per serving process). Needs no Redis."""
    from elevenlabs_agent.spool import slot_dirs, slot_status

    directory = _spool_directory(spool_dir)
    slots = [slot_status(slot) for slot in slot_dirs(directory)]
    total = {"records": sum(s["records"] for s in slots), "bytes": sum(s["bytes"] for s in slots)}
    if as_json:
        _print_json({"directory": str(directory), **total, "slots": slots})
        return
    click.echo(f"{directory}: {total['records']} callback(s) waiting, {total['bytes']:,} bytes")
    if slots:
        _table(
            "callback spool",
            ["slot", "held by a live process", "segments", "records", "torn", "bytes", "oldest"],
            [
                [
                    s["slot"],
                    s["heldByLiveProcess"],
                    s["segments"],
                    s["records"],
                    s["tornRecords"],
                    s["bytes"],
                    s["oldestReceivedAt"],
                ]
                for s in slots
            ],
        )


@spool.command("replay")
@spool_dir_option
@redis_url_option
@json_option
def spool_replay(spool_dir: Path | None, redis_url: str | None, as_json: bool) -> None:
    """Record every spooled callback in Redis now (slots a running process holds are left to it)."""
    from redis.exceptions import RedisError

    from elevenlabs_agent.runtime import Runtime
    from elevenlabs_agent.services.spool_replay import ReplayStats, SpoolReplayer
    from elevenlabs_agent.spool import Journal, slot_dirs, slot_status

    # The service's log lines (one per replayed or discarded callback) go to stderr, the report to stdout.
    with redirect_stdout(sys.stderr):
        settings = _settings()
    directory = spool_dir.resolve() if spool_dir is not None else settings.spool_directory
    url = _require_url(redis_url)
    held = [s["slot"] for s in map(slot_status, slot_dirs(directory)) if s["heldByLiveProcess"] and s["records"]]

    async def main() -> ReplayStats:
        runtime = Runtime.build(settings, url)
        # Not opened: this process owns no slot and replays only slots no live process holds.
        replayer = SpoolReplayer(Journal(directory, settings.callback_spool_max_bytes), runtime.callbacks, _true)
        stats = ReplayStats()
        try:
            await replayer.replay(stats)
            # Results go on to delivery as usual: a live push session gets them now, the others wait
            # in the outbox for the next SSE subscription or registration.
            await runtime.delivery.drain(settings.push_timeout_seconds + 1)
        finally:
            await runtime.close()
        return stats

    try:
        stats = asyncio.run(main())
    except (RedisError, OSError) as exc:
        raise click.ClickException(f"replay stopped, Redis error: {exc} (what was replayed stays replayed)") from None
    report = {**stats.as_dict(), "heldByLiveProcess": held}
    if as_json:
        _print_json(report)
        return
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(stats.outcomes.items())) or "nothing to replay"
    click.echo(f"replayed: {outcomes}; torn records skipped: {stats.skipped}")
    if held:
        click.echo(f"slots held by a running process (it replays them itself): {', '.join(held)}")


async def _true() -> bool:
    return True
