"""The key families in Redis: `stats`, `<family> list`, `<family> purge`, `restore`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from elevenlabs_agent.cli.common import (
    duration_value,
    json_option,
    main,
    print_json,
    progress_line,
    redis_url_option,
    require_url,
    table,
    with_redis,
)


@main.command()
@redis_url_option
@json_option
def stats(redis_url: str | None, as_json: bool) -> None:
    """Counts, TTL-less keys and estimated memory per key family; stuck task counts."""
    from elevenlabs_agent.ops.inspect import all_stats

    families = [s.as_dict() for s in with_redis(redis_url, all_stats)]
    if as_json:
        print_json(families)
        return
    table(
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

    rows = with_redis(redis_url, lambda redis: list_family(redis, name, **filters))
    if as_json:
        print_json(rows)
        return
    table(
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


older_than_option = click.option("--older-than", callback=duration_value, metavar="DUR", help="e.g. 30m, 24h, 7d.")
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
    url = require_url(redis_url)
    with progress_line(f"purging {name}" if yes else f"scanning {name}") as progress:
        try:
            report = with_redis(
                redis_url,
                lambda redis: purge(redis, url, family(name), flt, execute=yes, backup=backup, progress=progress),
            )
        except (LockBusy, BackupFailed) as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        print_json(report.as_dict())
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
        callback=duration_value,
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

    with progress_line("restoring" if yes else "checking") as progress:
        try:
            report = with_redis(
                redis_url, lambda redis: do_restore(redis, file, execute=yes, force=force, progress=progress)
            )
        except BackupFormatError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        print_json(report.as_dict())
    elif yes:
        click.echo(
            f"restored {report.restored} of {report.read} keys; {report.skipped_existing} existed and were left alone"
        )
    else:
        click.echo(
            f"dry run: {report.restored} of {report.read} keys would be restored, "
            f"{report.skipped_existing} exist already (use --force to overwrite); re-run with --yes"
        )
