"""The `elevenlabs-agent` command line (SPEC §7)."""

from __future__ import annotations

import sys

import click
from pydantic import ValidationError

from elevenlabs_agent import __version__
from elevenlabs_agent import logging as agent_logging
from elevenlabs_agent.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"invalid configuration: {problems}") from None


@click.group()
@click.version_option(__version__, prog_name="elevenlabs-agent")
def main() -> None:
    """elevenlabs-agent: ElevenLabs server tools -> cursor-runner -> results into live conversations."""


@main.command()
def serve() -> None:
    """Run the service (embedded Redis when REDIS_URL is unset)."""
    from elevenlabs_agent.serve import run

    settings = _settings()
    agent_logging.configure(settings.log_level, settings.secret_values)
    run(settings)


@main.command()
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the result.")
def demo(timeout: float) -> None:
    """One full round trip on this machine with no outside service; exit 0 on success."""
    import asyncio

    from elevenlabs_agent.demo import run_demo

    ok = asyncio.run(run_demo(timeout, echo=click.echo))
    sys.exit(0 if ok else 1)
