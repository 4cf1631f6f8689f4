"""The callback spool (issue 13): `spool status`, `spool replay`."""

from __future__ import annotations

import asyncio
import sys
from contextlib import redirect_stdout
from pathlib import Path

import click

from elevenlabs_agent.cli.common import (
    json_option,
    load_settings,
    main,
    print_json,
    redis_url_option,
    require_url,
    table,
)

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
    return spool_dir.resolve() if spool_dir is not None else load_settings().spool_directory


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
        print_json({"directory": str(directory), **total, "slots": slots})
        return
    click.echo(f"{directory}: {total['records']} callback(s) waiting, {total['bytes']:,} bytes")
    if slots:
        table(
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
        settings = load_settings()
    directory = spool_dir.resolve() if spool_dir is not None else settings.spool_directory
    url = require_url(redis_url)
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
        print_json(report)
        return
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(stats.outcomes.items())) or "nothing to replay"
    click.echo(f"replayed: {outcomes}; torn records skipped: {stats.skipped}")
    if held:
        click.echo(f"slots held by a running process (it replays them itself): {', '.join(held)}")


async def _true() -> bool:
    return True
