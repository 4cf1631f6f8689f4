"""What every route module shares: the runtime behind a request, the secret a caller presented."""

from __future__ import annotations

from starlette.requests import Request

from elevenlabs_agent.http.access import bearer
from elevenlabs_agent.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def presented_secret(request: Request, *header_names: str) -> str | None:
    for name in header_names:
        if value := request.headers.get(name):
            return value
    return bearer(request.scope)
