"""The OpenAPI 3.1 description of every route (served at `GET /openapi.json`).

It is the machine-readable form of SPEC §3/§4 and of the decisions in the README. Its body schemas are
generated from the models that validate requests and describe answers (schemas/), with the limits
of limits.py, so the document cannot drift from the code; the paths (http/openapi_paths.py), the
error responses and the security schemes are what is written here. The fuzz suite
(`tests/test_fuzz.py`) drives the live service from this document and checks every answer against it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec
import orjson

from elevenlabs_agent import SERVICE_NAME, __version__, limits
from elevenlabs_agent.http.access import TOKEN_COOKIE
from elevenlabs_agent.http.openapi_paths import Schema, paths, ref
from elevenlabs_agent.schemas.base import Id
from elevenlabs_agent.schemas.conversations import (
    RESERVED_CONVERSATION_IDS,
    BrowserSignIn,
    EventsAck,
    NewConversation,
    NewMessage,
    SessionRegistration,
)
from elevenlabs_agent.schemas.responses import NESTED, RESPONSES
from elevenlabs_agent.schemas.webhooks import CallbackBody, ToolCallBody

_REF = "#/components/schemas/"
REQUESTS = (ToolCallBody, CallbackBody, NewConversation, NewMessage, SessionRegistration, EventsAck, BrowserSignIn)

ERROR_RESPONSES = {
    "BadRequest": f"Malformed JSON, JSON nested deeper than {limits.MAX_JSON_DEPTH} levels, or a value the schema "
    "rejects (including any malformed id)",
    "Unauthorized": "Missing or wrong secret",
    "BrowserUnauthorized": "No browser identity (BROWSER_AUTH): no identity header from a trusted proxy, "
    "or a missing or wrong token",
    "TooManyRequests": "SIGNED_URL_RATE_PER_MINUTE reached for this identity; `Retry-After` says when to retry",
    "Forbidden": "Not allowed for this agent",
    "NotFound": "Unknown conversation, or no such route",
    "MethodNotAllowed": "The route does not take this method",
    "Conflict": "The resource's state forbids this (an existing id, a full conversation)",
    "PayloadTooLarge": "Body larger than MAX_BODY_BYTES ({max_body_bytes} bytes here)",
    "CallbackTooLarge": "Body larger than MAX_CALLBACK_BODY_BYTES ({max_callback_body_bytes} bytes here)",
    "UnsupportedMediaType": "Content-Type is not application/json (or */*+json)",
    "UpgradeRequired": "A WebSocket endpoint called without the WebSocket handshake",
    "BadGateway": "ElevenLabs answered badly",
    "Unavailable": "Disabled (ELEVENLABS_AGENT_ENABLED=false), not configured, or a dependency (Redis, "
    "ElevenLabs) is down; `message` is speakable",
}

SECURITY_SCHEMES: dict[str, Schema] = {
    "webhookSecret": {"type": "apiKey", "in": "header", "name": "X-Webhook-Secret"},
    "bearer": {"type": "http", "scheme": "bearer", "description": "WEBHOOK_SECRET as a bearer token"},
    "cursorRunnerSecret": {"type": "apiKey", "in": "header", "name": "X-Cursor-Runner-Secret"},
    "browserIdentity": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Forwarded-User",
        "description": "BROWSER_AUTH=proxy (default): the identity an authenticating proxy sets "
        "(header named by BROWSER_AUTH_HEADER), trusted only from TRUSTED_PROXY_CIDRS",
    },
    "browserToken": {"type": "http", "scheme": "bearer", "description": "BROWSER_AUTH=token"},
    "browserCookie": {"type": "apiKey", "in": "cookie", "name": TOKEN_COOKIE},
    "callbackSecret": {
        "type": "apiKey",
        "in": "query",
        "name": "secret",
        "description": "The per-task secret of the callback URL handed to cursor-runner",
    },
}


def schemas() -> dict[str, Schema]:
    """The body schemas, generated from the models, and the id schemas the paths' parameters use."""
    _, generated = msgspec.json.schema_components((*REQUESTS, *RESPONSES), ref_template=_REF + "{name}")
    *others, last = (f"`{name}`" for name in sorted(RESERVED_CONVERSATION_IDS))
    conversation_id = {
        "description": f"An Id other than the route names {', '.join(others)} and {last} "
        "(no conversation can have them).",
        "allOf": [ref("Id"), {"not": {"enum": sorted(RESERVED_CONVERSATION_IDS)}}],
    }
    components = {**generated, "Id": msgspec.json.schema(Id), "ConversationId": conversation_id}
    return _inline(components, {model.__name__ for model in NESTED})


def _inline(components: dict[str, Schema], names: set[str]) -> dict[str, Schema]:
    """`components` with the references to `names` replaced by their schemas (and those dropped), and
    the models' Python patterns (`\\A…\\Z`) in the form JSON Schema reads (`^…$`)."""
    bodies = {name: {k: v for k, v in components[name].items() if k != "title"} for name in names}

    def place(node: Any) -> Any:
        if isinstance(node, list):
            return [place(item) for item in node]
        if not isinstance(node, dict):
            return node
        target = node.get("$ref", "").removeprefix(_REF)
        if target in bodies:
            node = {**bodies[target], **{k: v for k, v in node.items() if k != "$ref"}}
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("\\A") and pattern.endswith("\\Z"):
            node = {**node, "pattern": f"^{pattern[2:-2]}$"}
        return {k: place(v) for k, v in node.items()}

    return {name: place(schema) for name, schema in components.items() if name not in names}


def responses(max_body_bytes: int, max_callback_body_bytes: int) -> dict[str, Schema]:
    error = {"application/json": {"schema": ref("Error")}}
    limits_here = {"max_body_bytes": max_body_bytes, "max_callback_body_bytes": max_callback_body_bytes}
    return {
        name: {"description": text.format(**limits_here), "content": error} for name, text in ERROR_RESPONSES.items()
    }


@lru_cache(maxsize=8)
def document(*, max_body_bytes: int, max_callback_body_bytes: int) -> bytes:
    """The OpenAPI document as JSON bytes, with this instance's configured body limits."""
    body: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": SERVICE_NAME,
            "version": __version__,
            "description": "Runs code work for ElevenLabs voice agents (SPEC §3/§4). Every error is "
            '`{"success": false, "error": "..."}`; never a 500 for anything a client sent.',
        },
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "responses": responses(max_body_bytes, max_callback_body_bytes),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
    return orjson.dumps(body)
