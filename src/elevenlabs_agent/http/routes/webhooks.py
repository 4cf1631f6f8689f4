"""The webhooks (SPEC §4): ElevenLabs' server tool and cursor-runner's completion callback."""

from __future__ import annotations

import hmac

import structlog
from starlette.requests import Request
from starlette.responses import Response

from elevenlabs_agent import events, metrics
from elevenlabs_agent.errors import Unauthorized, Unavailable
from elevenlabs_agent.http.errors import JSONResponse, parse_json, read_body, read_json
from elevenlabs_agent.http.routes.base import presented_secret, query_of, runtime_of
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.schemas.webhooks import CallbackBody, ToolCall
from elevenlabs_agent.services import speech

log = get_logger()


async def agent_tools(request: Request) -> Response:
    rt = runtime_of(request)
    settings = rt.settings
    if settings.webhook_configured:
        assert settings.webhook_secret is not None
        presented = presented_secret(request, "x-webhook-secret")
        expected = settings.webhook_secret.get_secret_value().encode()
        if presented is None or not hmac.compare_digest(presented.encode(), expected):
            log.warning(events.WEBHOOK_UNAUTHORIZED, reason="missing secret" if presented is None else "wrong secret")
            metrics.WEBHOOKS.labels("unauthorized").inc()
            raise Unauthorized("missing or invalid webhook secret")
    elif not settings.elevenlabs_agent_insecure_dev:
        log.error(events.WEBHOOK_NOT_CONFIGURED)
        metrics.WEBHOOKS.labels("not_configured").inc()
        raise Unavailable("webhook is not configured (WEBHOOK_SECRET is not set)", message=speech.NOT_CONFIGURED)
    call = ToolCall.parse(await read_json(request, settings.max_body_bytes), request.path_params.get("tool_name"))
    structlog.contextvars.bind_contextvars(toolName=call.tool_name)
    if call.conversation_id:
        structlog.contextvars.bind_contextvars(conversationId=call.conversation_id)
    log.info(events.WEBHOOK_RECEIVED)
    result = await rt.tools.handle(call)
    return JSONResponse(result)


async def callback(request: Request) -> Response:
    rt = runtime_of(request)
    raw = await read_body(request, rt.settings.max_callback_body_bytes)
    body = CallbackBody.from_json(raw)
    if body is None:
        body = CallbackBody.parse(parse_json(raw))
    structlog.contextvars.bind_contextvars(taskId=body.request_id)
    secret = presented_secret(request, "x-cursor-runner-secret", "x-webhook-secret") or query_of(
        request.query_params
    ).get("secret")
    return JSONResponse(await rt.callbacks.handle(body, secret))
