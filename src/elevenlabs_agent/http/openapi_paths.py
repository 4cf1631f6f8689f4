"""The paths of the OpenAPI document (http/openapi.py): what cannot be derived from the models, that
is which operations exist, what each one takes and answers, and its prose. Request and response
bodies are named components generated from schemas/."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import msgspec

from elevenlabs_agent import limits
from elevenlabs_agent.clients.elevenlabs import SIGNED_URL_VALIDITY
from elevenlabs_agent.http.access import AUTH_PATH, Group, group_of
from elevenlabs_agent.schemas.conversations import ListQuery

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _body(name: str, *, required: bool = True, description: str = "") -> Schema:
    return {"required": required, "description": description, "content": {"application/json": {"schema": ref(name)}}}


# Answers every agent route can give whatever its input: disabled flag or Redis down (503), a path that
# decodes to another route (404/405).
_COMMON = {"404": _error("NotFound"), "405": _error("MethodNotAllowed"), "503": _error("Unavailable")}
_BODY_ERRORS = {
    "400": _error("BadRequest"),
    "413": _error("PayloadTooLarge"),
    "415": _error("UnsupportedMediaType"),
}


def _conversation_id() -> Schema:
    return {"name": "conversation_id", "in": "path", "required": True, "schema": ref("ConversationId")}


def _query_parameters(query: type[msgspec.Struct]) -> list[Schema]:
    """The fields of a query model as parameters. A string enum also takes "" (its default)."""
    _, components = msgspec.json.schema_components([query])
    parameters = []
    for name, schema in components[query.__name__]["properties"].items():
        description = schema.pop("description", None)
        if "enum" in schema:
            schema["enum"] = ["", *schema["enum"]]
        parameters.append({"name": name, "in": "query", "schema": schema})
        if description:
            parameters[-1]["description"] = description
    return parameters


def _web_asset_headers() -> dict[str, Schema]:
    return {
        "ETag": {"required": True, "schema": {"type": "string"}},
        "Cache-Control": {"required": True, "schema": {"type": "string"}},
    }


TOOL_OPERATION: Schema = {
    "summary": "ElevenLabs server-tool webhook (SPEC §4)",
    "description": "Answers within DISPATCH_TIMEOUT_SECONDS; cursor-runner down, slow or refusing is still a "
    "200 with `success:false` and a speakable `message`.",
    "security": [{"webhookSecret": []}, {"bearer": []}],
    "requestBody": _body("ToolCallBody"),
    "responses": {
        "200": _json(ref("ToolAnswer"), "The tool's answer"),
        **_BODY_ERRORS,
        "401": _error("Unauthorized"),
        "409": _error("Conflict"),
        **_COMMON,
    },
}
TOOL_NAME_PARAMETER: Schema = {
    "name": "tool_name",
    "in": "path",
    "required": True,
    "description": "The tool name when the body carries none.",
    "schema": {"type": "string", "pattern": limits.TOOL_NAME_PATTERN},
}

_PATHS: dict[str, Schema] = {
    "/health": {
        "get": {
            "summary": "Liveness (works with the feature flag off)",
            "responses": {"200": _json(ref("Health"), "The process serves")},
        }
    },
    "/ready": {
        "get": {
            "summary": "Readiness: Redis answers PING and the service is not draining",
            "responses": {
                "200": {"description": "Ready", "content": {"application/health+json": {"schema": ref("Ready")}}},
                "503": {
                    "description": "Not ready",
                    "content": {"application/health+json": {"schema": ref("Ready")}},
                },
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus text exposition",
            "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }
    },
    "/config": {
        "get": {
            "summary": "Non-secret configuration",
            "responses": {"200": _json(ref("Config"), "Configuration")},
        }
    },
    "/config/health": {
        "get": {
            "summary": "Dependency view for the web frontend (bounded time)",
            "responses": {"200": _json(ref("ConfigHealth"), "Dependencies")},
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document (503 like every agent route when the feature flag is off)",
            "responses": {
                "200": _json({"type": "object", "required": ["openapi", "paths"]}, "OpenAPI 3.1"),
                "503": _error("Unavailable"),
            },
        }
    },
    "/signed-url": {
        "get": {
            "summary": "A signed ElevenLabs conversation URL "
            f"(valid {SIGNED_URL_VALIDITY // timedelta(minutes=1)} minutes) for a private agent",
            "parameters": [
                {
                    "name": "agentId",
                    "in": "query",
                    "required": False,
                    "description": "Empty or absent: ELEVENLABS_AGENT_ID. Only configured agents are signed for.",
                    "schema": {"anyOf": [{"const": ""}, ref("Id")]},
                }
            ],
            "responses": {
                "200": _json(ref("SignedUrl"), "Signed URL"),
                "400": _error("BadRequest"),
                "403": _error("Forbidden"),
                "429": _error("TooManyRequests"),
                "502": _error("BadGateway"),
                **_COMMON,
            },
        }
    },
    AUTH_PATH: {
        "post": {
            "summary": "BROWSER_AUTH=token: exchange a token for an HttpOnly session cookie (for EventSource and "
            "WebSocket, which cannot send headers)",
            "requestBody": _body("BrowserSignIn"),
            "responses": {
                "200": _json(ref("Ok"), "Signed in; the cookie is set"),
                **_BODY_ERRORS,
                "401": _error("Unauthorized"),
                **_COMMON,
            },
        },
        "delete": {
            "summary": "Sign out: clear the session cookie",
            "responses": {"200": _json(ref("Ok"), "Cookie cleared"), "400": _error("BadRequest"), **_COMMON},
        },
    },
    "/agent-tools": {"post": {**TOOL_OPERATION, "operationId": "agentTools"}},
    "/agent-tools/{tool_name}": {
        "post": {**TOOL_OPERATION, "operationId": "agentToolsNamed", "parameters": [TOOL_NAME_PARAMETER]}
    },
    "/callback": {
        "post": {
            "summary": "cursor-runner's completion callback (SPEC §4): persisted before the 200",
            "description": "Idempotent: a repeat answers `duplicate:true` and changes nothing. An unknown or "
            "expired task answers 200 with a `note`. The body is validated before the secret is checked.",
            "security": [
                {"callbackSecret": []},
                {"cursorRunnerSecret": []},
                {"webhookSecret": []},
                {"bearer": []},
            ],
            "requestBody": _body("CallbackBody"),
            "responses": {
                "200": _json(ref("CallbackAck"), "Stored (or a duplicate, or an unknown task)"),
                **_BODY_ERRORS,
                "413": _error("CallbackTooLarge"),
                "401": _error("Unauthorized"),
                **_COMMON,
            },
        }
    },
    "/agent-conversations/relay.js": {
        "get": {
            "summary": "The browser half of the relay channel (SPEC §5.4): a dependency-free ES module",
            "description": "`startRelay({baseUrl, conversationId, conversation, speak, onResult})` forwards each "
            "result of the conversation's event stream into the live ElevenLabs session "
            "(`sendContextualUpdate`), then acknowledges it. Served with the feature flag off too (a page "
            f"importing it must still load). Cached {limits.WEB_ASSET_MAX_AGE_SECONDS // 60} minutes "
            "(`Cache-Control`), then revalidated with the "
            "`ETag` (service version and content hash): `If-None-Match` with it answers 304.",
            "responses": {
                "200": {
                    "description": "The module (`text/javascript; charset=utf-8`)",
                    "headers": _web_asset_headers(),
                    "content": {"text/javascript": {"schema": {"type": "string"}}},
                },
                "304": {"description": "Not modified (`If-None-Match` named the current ETag)"},
            },
        }
    },
    "/agent-conversations/relay.d.ts": {
        "get": {
            "summary": "TypeScript declarations of relay.js",
            "responses": {
                "200": {
                    "description": "The declarations (`application/typescript; charset=utf-8`)",
                    "headers": _web_asset_headers(),
                    "content": {"application/typescript": {"schema": {"type": "string"}}},
                },
                "304": {"description": "Not modified (`If-None-Match` named the current ETag)"},
            },
        }
    },
    "/agent-conversations/api/list": {
        "get": {
            "summary": "Conversations in the order asked for (newest first by default)",
            "description": "Each order is a range read of a Redis sorted set. Ties in messageCount are in "
            "conversation id order.",
            "parameters": _query_parameters(ListQuery),
            "responses": {
                "200": _json(ref("ConversationList"), "A page of conversations"),
                "400": _error("BadRequest"),
                **_COMMON,
            },
        }
    },
    "/agent-conversations/api/ws": {
        "get": {
            "summary": "Live conversation updates over a WebSocket (SPEC §3.1)",
            "description": "A WebSocket handshake (`Upgrade: websocket`). Text frames, JSON: "
            "`LiveSnapshot` right after connecting, then `LiveUpdate` (the whole conversation) on every "
            "change made by any instance (client message, pending tool call, tool result, delivery), "
            "`LiveError` for an unknown or malformed conversation id (then close 4404 or 1008; 1013 when "
            "Redis is unavailable). The server pings every WS_PING_INTERVAL_SECONDS and drops a peer that "
            'does not answer within WS_PING_TIMEOUT_SECONDS; a text frame `{"type":"ping"}` is '
            'answered `{"type":"pong"}`. A draining instance closes with 1001 (reconnect). A browser '
            "Origin must be in CORS_ALLOW_ORIGINS or the page's own origin, else the handshake is a 403.",
            "parameters": [
                {"name": "conversationId", "in": "query", "required": True, "schema": ref("ConversationId")}
            ],
            "responses": {
                "101": {"description": "Switching protocols: frames as described above"},
                "400": _error("BadRequest"),
                "426": _error("UpgradeRequired"),
                **_COMMON,
            },
        }
    },
    "/agent-conversations/api/new": {
        "post": {
            "summary": "Create a conversation (an empty body is allowed)",
            "requestBody": _body("NewConversation", required=False),
            "responses": {
                "201": _json(ref("ConversationResponse"), "Created"),
                **_BODY_ERRORS,
                "409": _error("Conflict"),
                **_COMMON,
            },
        }
    },
    "/agent-conversations/api/{conversation_id}": {
        "get": {
            "summary": "One conversation with its messages",
            "parameters": [_conversation_id()],
            "responses": {
                "200": _json(ref("ConversationResponse"), "The conversation"),
                "400": _error("BadRequest"),
                **_COMMON,
            },
        }
    },
    "/agent-conversations/api/{conversation_id}/message": {
        "post": {
            "summary": "Append a message (MAX_MESSAGES_PER_CONVERSATION client messages at most: then 409)",
            "parameters": [_conversation_id()],
            "requestBody": _body("NewMessage"),
            "responses": {
                "201": _json(ref("MessageCreated"), "Appended"),
                **_BODY_ERRORS,
                "409": _error("Conflict"),
                **_COMMON,
            },
        }
    },
    "/agent-conversations/api/{conversation_id}/session": {
        "post": {
            "summary": "Register the live session (TTL SESSION_TTL_SECONDS, refreshed by re-registering)",
            "parameters": [_conversation_id()],
            "requestBody": _body("SessionRegistration"),
            "responses": {
                "200": _json(ref("SessionRegistered"), "Registered"),
                **_BODY_ERRORS,
                **_COMMON,
            },
        }
    },
    "/agent-conversations/api/{conversation_id}/events": {
        "get": {
            "summary": "Server-Sent Events: task updates of the conversation (relay channel)",
            "description": f"Starts with `retry: {limits.SSE_RETRY_MS}`; each result is `id: <stream id>`, "
            "`event: task_update`, "
            "`data: <JSON>`; `: keep-alive` comments every SSE_KEEPALIVE_SECONDS. Results not yet "
            "acknowledged are sent again to every new subscriber. Resumable with `Last-Event-ID`.",
            "parameters": [
                _conversation_id(),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "An event id this stream sent (empty: not resuming).",
                    "schema": {"type": "string", "pattern": limits.OPTIONAL_STREAM_ID_PATTERN},
                },
                {
                    "name": "lastEventId",
                    "in": "query",
                    "required": False,
                    "description": "The same, for clients that cannot set headers (the header wins).",
                    "schema": {"type": "string", "pattern": limits.STREAM_ID_PATTERN},
                },
            ],
            "responses": {
                "200": {
                    "description": "The event stream (never ends by itself)",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _error("BadRequest"),
                **_COMMON,
            },
        }
    },
    "/agent-conversations/api/{conversation_id}/events/ack": {
        "post": {
            "summary": "The browser forwarded these relayed results: stop offering them",
            "parameters": [_conversation_id()],
            "requestBody": _body("EventsAck"),
            "responses": {
                "200": _json(ref("EventsAcknowledged"), "Task ids that were pending and now are not"),
                **_BODY_ERRORS,
                **_COMMON,
            },
        }
    },
}


def paths() -> dict[str, Schema]:
    """Every operation; those of the browser route group (access.py) declare its policy and its 401."""
    document = copy.deepcopy(_PATHS)
    for path, operations in document.items():
        if group_of(path) is not Group.BROWSER:
            continue
        for operation in operations.values():
            operation["security"] = [{"browserIdentity": []}, {"browserToken": []}, {"browserCookie": []}]
            operation["responses"]["401"] = _error("BrowserUnauthorized")
    return document
