"""The ASGI application: routes, middleware, error handlers and the runtime's lifetime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp

from elevenlabs_agent import events
from elevenlabs_agent.housekeeping import Housekeeper
from elevenlabs_agent.http.access import BrowserAuth
from elevenlabs_agent.http.errors import EXCEPTION_HANDLERS
from elevenlabs_agent.http.middleware import EdgeMiddleware
from elevenlabs_agent.http.routes import METRICS_ROUTE, METRICS_ROUTES, ROUTES
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.runtime import Runtime
from elevenlabs_agent.services.spool_replay import SpoolReplayer
from elevenlabs_agent.settings import Settings

log = get_logger()
# Called by ElevenLabs, cursor-runner and load balancers at rate: served past most of the stack.
HOT_PATHS = frozenset({"/agent-tools", "/callback", "/health", "/ready"})


def create_app(settings: Settings, redis_url: str) -> Starlette:
    runtime = Runtime.build(settings, redis_url)
    # With METRICS_PORT, /metrics is served only by the second listener (`create_metrics_app`).
    routes = [r for r in ROUTES if settings.metrics_port is None or r is not METRICS_ROUTE]
    browser_auth = BrowserAuth(settings)
    app = _App(
        _edge(settings, browser_auth),
        routes=routes,
        middleware=[_cors(settings)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=_lifespan(runtime, settings),
    )
    # A trailing slash is an unknown route (JSON 404), not Starlette's bodiless 307 to the path without it.
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    app.state.browser_auth = browser_auth
    return app


class _App(Starlette):
    """Starlette with the edge outside its ServerErrorMiddleware: a hot route's request then passes
    one layer instead of two before its endpoint, and the edge answers what nothing answered with the
    same JSON 500 (`EdgeMiddleware.__call__`)."""

    def __init__(self, edge: dict[str, Any], **options: Any) -> None:
        super().__init__(**options)
        self.edge = edge

    def build_middleware_stack(self) -> ASGIApp:
        return EdgeMiddleware(super().build_middleware_stack(), **self.edge)


def _edge(settings: Settings, browser_auth: BrowserAuth) -> dict[str, Any]:
    return {
        "enabled": settings.elevenlabs_agent_enabled,
        "hot_routes": [r for r in ROUTES if isinstance(r, Route) and r.path in HOT_PATHS],
        "access_log": logging.getLevelNamesMapping().get(settings.log_level.upper(), 0) <= logging.INFO,
        "browser_auth": browser_auth,
        "allowed_origins": settings.cors_allow_origins,
    }


def _cors(settings: Settings) -> Middleware:
    return Middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_allow_origins),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-Id"],
        # Credentials (the token cookie, a proxy's cookie) only for origins named one by one.
        allow_credentials="*" not in settings.cors_allow_origins,
    )


def _lifespan(runtime: Runtime, settings: Settings) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """Background work started with the app, and the drain when it stops."""
    housekeeper = Housekeeper(runtime, settings.housekeeping_interval_seconds, settings.housekeeping_max_keys)
    replayer = None
    if runtime.journal is not None:

        async def redis_up() -> bool:
            return (await runtime.redis_ping())[0]

        replayer = SpoolReplayer(runtime.journal, runtime.callbacks, redis_up)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info(
            events.SERVICE_STARTED,
            enabled=settings.elevenlabs_agent_enabled,
            webhookConfigured=settings.webhook_configured,
            browserAuth=settings.browser_auth,
        )
        if settings.browser_auth == "none":
            log.warning(events.BROWSER_AUTH_DISABLED, note="BROWSER_AUTH=none: browser routes are open to anyone")
        housekeeper.start()
        runtime.live.start()
        if replayer is not None:
            # What a previous process left is replayed as soon as Redis answers.
            replayer.journal.open()
            replayer.start()
        try:
            yield
        finally:
            try:
                await housekeeper.stop()
                if replayer is not None:
                    await replayer.stop()
                runtime.start_draining()
                await runtime.live.close_all(timeout=1.0)
                await runtime.live.stop()
                log.info(events.SERVICE_STOPPING, inflightDeliveries=runtime.delivery.inflight)
                finished = await runtime.delivery.drain(runtime.time_left(settings.shutdown_timeout_seconds))
            finally:
                # Connections are closed whatever failed above (even a log write to a closed stdout).
                await runtime.close()
            log.info(events.SERVICE_STOPPED, deliveriesFinished=finished)

    return lifespan


def create_metrics_app(runtime: Runtime) -> Starlette:
    """The METRICS_PORT listener: /metrics and the probes, sharing the main app's runtime."""
    app = Starlette(routes=METRICS_ROUTES, exception_handlers=EXCEPTION_HANDLERS)
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    return app
