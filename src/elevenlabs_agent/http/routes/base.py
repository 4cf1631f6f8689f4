"""What every route module shares: the runtime behind a request, the secret a caller presented, the
query's parameters."""

from __future__ import annotations

from starlette.datastructures import QueryParams
from starlette.requests import Request

from elevenlabs_agent.errors import InvalidInput
from elevenlabs_agent.http.access import bearer, header
from elevenlabs_agent.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def presented_secret(request: Request, *header_names: str) -> str | None:
    """The first non-empty of these headers (names in lower case), else a bearer token."""
    for name in header_names:
        if value := header(request.scope, name.encode("latin-1")):
            return value
    return bearer(request.scope)


def query_of(params: QueryParams) -> dict[str, str]:
    """The query's parameters, each with its one value. None of this API's parameters is a list, so a
    repeated one is a 400 rather than a silent pick of one of its values (frameworks and proxies
    differ on which they keep: `?conversationId=a&conversationId=b` must not mean either)."""
    items = params.multi_items()
    if len(items) != len(params):  # `len` counts distinct names
        seen: set[str] = set()
        for name, _ in items:
            if name in seen:
                raise InvalidInput(f"{name} must be given once")
            seen.add(name)
    return dict(items)
