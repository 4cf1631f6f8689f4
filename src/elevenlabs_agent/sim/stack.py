"""One wiring of the service with its loopback neighbours, shared by `elevenlabs-agent demo`, the test
suite and the benchmarks: the simulated ElevenLabs and cursor-runner, the settings that point the
service at them (as `Settings` fields for a service in this event loop, or as environment variables
for a `serve` process), and the service itself on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from elevenlabs_agent import logging as agent_logging
from elevenlabs_agent.http.app import create_app
from elevenlabs_agent.settings import Settings
from elevenlabs_agent.sim.cursor_runner import FakeCursorRunner
from elevenlabs_agent.sim.elevenlabs import FakeElevenLabs
from elevenlabs_agent.sim.server import LocalServer

# Registered session and push URLs point at the ElevenLabs stand-in on loopback (the SSRF guard's list).
LOOPBACK_HOSTS = ("127.0.0.1",)


@dataclass
class Neighbours:
    """The simulated ElevenLabs and cursor-runner, listening."""

    elevenlabs: FakeElevenLabs
    elevenlabs_server: LocalServer
    runner: FakeCursorRunner
    runner_server: LocalServer

    def fields(self) -> dict[str, Any]:
        """The settings that point a service at these two."""
        fields: dict[str, Any] = {
            "elevenlabs_api_key": SecretStr(self.elevenlabs.api_key),
            "elevenlabs_api_url": self.elevenlabs_server.url,
            "cursor_runner_url": self.runner_server.url,
        }
        if self.runner.secret is not None:
            fields["cursor_runner_secret"] = SecretStr(self.runner.secret)
        return fields


@contextlib.asynccontextmanager
async def _serving(*servers: LocalServer) -> AsyncIterator[None]:
    """Start `servers` in order; stop them together (each stop waits out uvicorn's shutdown polling,
    ~0.2 s, which a test suite pays once per stack)."""
    try:
        for server in servers:
            await server.start()
        yield
    finally:
        await asyncio.gather(*(server.stop() for server in servers))


def _bind(elevenlabs: FakeElevenLabs | None, runner: FakeCursorRunner | None) -> Neighbours:
    """The two stand-ins (default ones unless given) on bound loopback ports, not serving yet."""
    elevenlabs = elevenlabs or FakeElevenLabs()
    runner = runner or FakeCursorRunner()
    el_server, runner_server = LocalServer(elevenlabs.app()), LocalServer(runner.app())
    elevenlabs.base_ws_url = el_server.ws_url  # signed URLs lead to this server's conversation socket
    return Neighbours(elevenlabs, el_server, runner, runner_server)


@contextlib.asynccontextmanager
async def neighbours(
    elevenlabs: FakeElevenLabs | None = None, runner: FakeCursorRunner | None = None
) -> AsyncIterator[Neighbours]:
    """Serve the two stand-ins on loopback ports for the block's duration (for `serve` processes)."""
    around = _bind(elevenlabs, runner)
    async with _serving(around.elevenlabs_server, around.runner_server):
        yield around


def service_fields(service_url: str, around: Neighbours | None = None, **fields: Any) -> dict[str, Any]:
    """Settings fields of a service at `service_url`, wired to `around` when given (benchmarks bring a
    faster cursor-runner of their own as `cursor_runner_url`); `fields` add to them and win. The caller
    gives at least `redis_url`, `webhook_secret` and its own `callback_spool_dir`, so that the service
    never writes into the working directory's .elevenlabs-agent/."""
    return {
        "elevenlabs_agent_enabled": True,
        "session_url_hosts": LOOPBACK_HOSTS,
        "elevenlabs_agent_url": service_url,
        **(around.fields() if around is not None else {}),
        **fields,
    }


def as_env(fields: Mapping[str, Any]) -> dict[str, str]:
    """Settings fields as the environment variables a `serve` process reads."""
    env = {}
    for name, value in fields.items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, tuple | list):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[name.upper()] = str(value)
    return env


@dataclass
class ServiceStack:
    """The service in this event loop, its settings and its neighbours."""

    settings: Settings
    service: LocalServer
    around: Neighbours


@contextlib.asynccontextmanager
async def service_stack(
    elevenlabs: FakeElevenLabs | None = None, runner: FakeCursorRunner | None = None, **fields: Any
) -> AsyncIterator[ServiceStack]:
    """The two stand-ins and the real service, on loopback ports in this event loop (`fields`: see
    service_fields; `redis_url` is required, this starts no Redis)."""
    around = _bind(elevenlabs, runner)
    service = LocalServer()  # bound first: the service's settings need its own URL
    settings = Settings(**service_fields(service.url, around, **fields))
    if not settings.redis_url:
        raise ValueError("service_stack needs a redis_url (it starts no embedded Redis)")
    agent_logging.configure(settings.log_level, settings.secret_values)
    service.app = create_app(settings, settings.redis_url)
    async with _serving(around.elevenlabs_server, around.runner_server, service):
        yield ServiceStack(settings, service, around)
