"""What the command groups share: the root group, configuration loading, the Redis runner, output."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from elevenlabs_agent import __version__

if TYPE_CHECKING:
    from elevenlabs_agent.settings import Settings

T = TypeVar("T")


@click.group()
@click.version_option(__version__, prog_name="elevenlabs-agent")
def main() -> None:
    """elevenlabs-agent: ElevenLabs server tools -> cursor-runner -> results into live conversations."""


def load_settings() -> Settings:
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


def duration_value(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
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


def with_redis(redis_url: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(redis)` against Redis, turning connection trouble into one clear line."""
    from redis.exceptions import RedisClusterException, RedisError

    from elevenlabs_agent.redis.clients import open_redis

    url = require_url(redis_url)
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


def require_url(redis_url: str | None) -> str:
    from elevenlabs_agent.local import recorded_redis_url

    url = redis_url or recorded_redis_url()
    if not url:
        raise click.ClickException(
            "no Redis to talk to: pass --redis-url, set REDIS_URL, or start the local instance (./scripts/run)"
        )
    return url


def print_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
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
def progress_line(label: str) -> Iterator[Callable[[Any], None] | None]:
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
