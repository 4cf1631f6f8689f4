"""Running and probing the service: `serve`, `demo`, `health`."""

from __future__ import annotations

import asyncio
import os
import sys

import click

from elevenlabs_agent.cli.common import json_option, load_settings, main, print_json


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
            run(load_settings(), worker_fd, supervisor_pid, metrics_fd=metrics_fd)
        except PortInUse as exc:
            raise click.ClickException(str(exc)) from None
        return

    from elevenlabs_agent.local import apply_defaults, local_environment

    apply_defaults()
    try:
        listener = listen(load_settings())
    except PortInUse as exc:
        raise click.ClickException(str(exc)) from None
    with local_environment(say=lambda text: click.echo(text, err=True), terminal=sys.stderr.isatty()):
        run(load_settings(), listener=listener)


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
        print_json({"healthy": healthy, "url": base, "ready": body})
    else:
        click.echo(line)
    sys.exit(0 if healthy else 1)
