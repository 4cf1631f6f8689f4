"""Operations routes: probes, metrics, non-secret configuration and the OpenAPI document."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from elevenlabs_agent import SERVICE_NAME, __version__, metrics
from elevenlabs_agent.http import openapi
from elevenlabs_agent.http.errors import JSONResponse
from elevenlabs_agent.http.routes.base import runtime_of
from elevenlabs_agent.runtime import Runtime
from elevenlabs_agent.timeutil import now_iso


async def health(request: Request) -> Response:
    rt = runtime_of(request)
    ok, _ = await rt.redis_ping(timeout=0.5)
    return JSONResponse(
        {
            "status": "ok",
            "service": SERVICE_NAME,
            "version": __version__,
            "redis": "connected" if ok else "disconnected",
            "draining": rt.draining,
            # Callbacks made durable locally while Redis was down, waiting to be replayed (null: off).
            "callbackSpool": rt.journal.summary() if rt.journal is not None else None,
            "uptimeSeconds": round(time.time() - rt.started_at, 1),
            "timestamp": now_iso(),
        }
    )


async def ready(request: Request) -> Response:
    rt = runtime_of(request)
    ok, latency = await rt.redis_ping()
    passing = ok and not rt.draining
    body = {
        "status": "pass" if passing else "fail",
        "service": SERVICE_NAME,
        "checks": {
            "redis:ping": [
                {
                    "status": "pass" if ok else "fail",
                    "observedValue": round(latency, 2),
                    "observedUnit": "ms",
                    "time": now_iso(),
                }
            ],
            "service:draining": [{"status": "fail" if rt.draining else "pass", "observedValue": rt.draining}],
            # `warn` never fails readiness: it tells whoever looks that browser routes are open.
            "browser:auth": [
                {
                    "status": "warn" if rt.settings.browser_auth == "none" else "pass",
                    "observedValue": rt.settings.browser_auth,
                }
            ],
            **_spool_check(rt),
        },
    }
    return Response(orjson.dumps(body), status_code=200 if passing else 503, media_type="application/health+json")


def _spool_check(rt: Runtime) -> dict[str, Any]:
    """Spooled callbacks do not make the instance unready (it still takes callbacks): a warning."""
    if rt.journal is None:
        return {}
    spool = rt.journal.summary()
    return {
        "callbackSpool:records": [
            {
                "status": "warn" if spool["records"] or not spool["writable"] else "pass",
                "observedValue": spool["records"],
                "oldestAgeSeconds": spool["oldestAgeSeconds"],
                "writable": spool["writable"],
            }
        ]
    }


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def config(request: Request) -> Response:
    s = runtime_of(request).settings
    return JSONResponse(
        {
            "success": True,
            "config": {
                "agentId": s.elevenlabs_agent_id,
                "agentUrl": s.elevenlabs_agent_url,
                "cursorRunnerUrl": s.cursor_runner_url,
                "webhookSecretConfigured": s.webhook_configured,
                "redisUrl": "configured" if s.redis_url else "embedded",
                "hasApiKey": s.elevenlabs_api_key is not None,
                "enabled": s.elevenlabs_agent_enabled,
                "browserAuth": s.browser_auth,
            },
        }
    )


async def config_health(request: Request) -> Response:
    rt = runtime_of(request)
    (redis_ok, latency), runner = await asyncio.gather(rt.redis_ping(), rt.cursor_runner.probe())
    redis_state = "connected" if redis_ok else "disconnected"
    return JSONResponse(
        {
            "service": SERVICE_NAME,
            "status": "ok" if redis_ok and runner.state == "connected" else "degraded",
            # Plain strings: the front end renders them as text (SPEC §3.1); detail is in `checks`.
            "dependencies": {"redis": redis_state, "cursorRunner": runner.state},
            "checks": {
                "redis": {"status": redis_state, "latencyMs": round(latency, 2)},
                "cursorRunner": {"status": runner.state, "detail": runner.detail},
            },
            "timestamp": now_iso(),
        }
    )


async def openapi_json(request: Request) -> Response:
    s = runtime_of(request).settings
    document = openapi.document(
        max_body_bytes=s.max_body_bytes,
        max_callback_body_bytes=s.max_callback_body_bytes,
    )
    return Response(document, media_type="application/json")
