"""The OpenAPI 3.1 description of every route (served at `GET /openapi.json`).

It is the machine-readable form of SPEC §3/§4 and of the decisions in the README: request bodies
with the limits the service enforces (taken from the constants that enforce them, so the document
cannot drift from the code), and a response schema for every status a route can answer. The fuzz
suite (`tests/test_fuzz.py`) drives the live service from this document and checks every answer
against it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

from elevenlabs_agent import SERVICE_NAME, __version__
from elevenlabs_agent.http.access import AUTH_PATH, TOKEN_COOKIE, Group, group_of
from elevenlabs_agent.http.errors import MAX_JSON_DEPTH
from elevenlabs_agent.services import conversations, tools
from elevenlabs_agent.stores import ids
from elevenlabs_agent.url_policy import MAX_URL_LENGTH

Schema = dict[str, Any]

ID_MAX_LENGTH = 128
TOOL_NAME_PATTERN = tools.TOOL_NAME_PATTERN
STREAM_ID_PATTERN = "^[0-9]{1,20}(-[0-9]{1,20})?$"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [{"type": "null"}, schema]}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _body(name: str, *, required: bool = True, description: str = "") -> Schema:
    return {"required": required, "description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _schemas(max_page: int, max_ack_ids: int) -> dict[str, Schema]:
    string = {"type": "string"}
    timestamp = {"type": "string", "description": "ISO 8601, UTC"}
    message_status = {"type": "string", "enum": sorted(conversations.STATUSES)}
    return {
        "Id": {
            "type": "string",
            "minLength": 1,
            "maxLength": ID_MAX_LENGTH,
            "pattern": ids.ID_PATTERN.pattern,
            "description": "An id that becomes part of a Redis key name: 1-128 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit). Anything else is a 400.",
        },
        "ConversationId": {
            "description": "An Id other than the route names `list`, `new` and `ws` (no conversation can have them).",
            "allOf": [_ref("Id"), {"not": {"enum": sorted(conversations.RESERVED_CONVERSATION_IDS)}}],
        },
        "Error": {
            "type": "object",
            "description": "Every 4xx/5xx answer. `message`, when present, is a sentence a voice agent can say.",
            "required": ["success", "error"],
            "properties": {
                "success": {"const": False},
                "error": {"type": "string", "minLength": 1},
                "message": string,
                "conversationId": string,
                "agentId": string,
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "service", "version", "redis", "draining", "uptimeSeconds", "timestamp"],
            "properties": {
                "status": {"const": "ok"},
                "service": {"const": SERVICE_NAME},
                "version": string,
                "redis": {"enum": ["connected", "disconnected"]},
                "draining": {"type": "boolean"},
                "callbackSpool": {
                    "type": ["object", "null"],
                    "description": "Callbacks spooled locally while Redis was down, not yet replayed (null: spool off)",
                    "properties": {
                        "records": {"type": "integer", "minimum": 0},
                        "bytes": {"type": "integer", "minimum": 0},
                        "oldestAgeSeconds": {"type": "number", "minimum": 0},
                        "maxBytes": {"type": "integer", "minimum": 0},
                        "writable": {"type": "boolean"},
                    },
                },
                "uptimeSeconds": {"type": "number", "minimum": 0},
                "timestamp": timestamp,
            },
        },
        "Ready": {
            "type": "object",
            "description": "application/health+json (draft-inadarei-api-health-check)",
            "required": ["status", "service", "checks"],
            "properties": {
                "status": {"enum": ["pass", "fail"]},
                "service": {"const": SERVICE_NAME},
                "checks": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["status"],
                            "properties": {
                                "status": {"enum": ["pass", "warn", "fail"]},
                                "observedValue": {"type": ["number", "boolean", "string"]},
                                "observedUnit": string,
                                "time": timestamp,
                            },
                        },
                    },
                },
            },
        },
        "Config": {
            "type": "object",
            "required": ["success", "config"],
            "properties": {
                "success": {"const": True},
                "config": {
                    "type": "object",
                    "description": "Non-secret configuration only: no secret value is ever part of it.",
                    "additionalProperties": False,
                    "required": [
                        "agentId",
                        "agentUrl",
                        "cursorRunnerUrl",
                        "webhookSecretConfigured",
                        "redisUrl",
                        "hasApiKey",
                        "enabled",
                        "browserAuth",
                    ],
                    "properties": {
                        "agentId": _nullable(string),
                        "agentUrl": string,
                        "cursorRunnerUrl": string,
                        "webhookSecretConfigured": {"type": "boolean"},
                        "browserAuth": {"enum": ["proxy", "token", "none"]},
                        "redisUrl": {"enum": ["configured", "embedded"]},
                        "hasApiKey": {"type": "boolean"},
                        "enabled": {"type": "boolean"},
                    },
                },
            },
        },
        "ConfigHealth": {
            "type": "object",
            "required": ["service", "status", "dependencies", "checks", "timestamp"],
            "properties": {
                "service": {"const": SERVICE_NAME},
                "status": {"enum": ["ok", "degraded"]},
                "dependencies": {
                    "type": "object",
                    "description": "Plain strings: the web front end renders them as text (SPEC §3.1).",
                    "required": ["redis", "cursorRunner"],
                    "properties": {
                        "redis": {"enum": ["connected", "disconnected"]},
                        "cursorRunner": {
                            "enum": ["connected", "unhealthy", "disconnected"],
                            "description": "GET /health of cursor-runner: 2xx, another HTTP answer, no answer.",
                        },
                    },
                },
                "checks": {
                    "type": "object",
                    "description": "Per-check detail.",
                    "required": ["redis", "cursorRunner"],
                    "properties": {
                        "redis": {
                            "type": "object",
                            "required": ["status", "latencyMs"],
                            "properties": {
                                "status": {"enum": ["connected", "disconnected"]},
                                "latencyMs": {"type": "number", "minimum": 0},
                            },
                        },
                        "cursorRunner": {
                            "type": "object",
                            "required": ["status", "detail"],
                            "properties": {
                                "status": {"enum": ["connected", "unhealthy", "disconnected"]},
                                "detail": string,
                            },
                        },
                    },
                },
                "timestamp": timestamp,
            },
        },
        "SignedUrl": {
            "type": "object",
            "required": ["signedUrl", "expiresAt"],
            "properties": {"signedUrl": {"type": "string", "minLength": 1}, "expiresAt": timestamp},
        },
        "ToolCall": {
            "type": "object",
            "description": (
                "Either shape of SPEC §4. The original one: `{agent_id, session_id, tool_name, tool_args, "
                "conversation_id?}` (the presence of `tool_args` selects it). A flat tool body: every member "
                "but `tool_name`, `tool_args`, `conversation_id`, `session_id`, `agent_id` is a tool argument. "
                "The prompt of a code tool is its `prompt` (or `task`, `instruction`, `query`) argument, at most "
                f"{tools.MAX_PROMPT_CHARS} characters after trimming; without one, the tool name and its other "
                "arguments as JSON. `get_task_status` takes `task_id` (or `taskId`, `requestId`). A code tool "
                "needs `conversation_id` (map it from `system__conversation_id`); without one it is a 400."
            ),
            "properties": {
                "tool_name": _nullable(
                    {
                        "type": "string",
                        "pattern": "^[A-Za-z0-9_.-]{0,64}$",
                        "description": f"Empty or absent: the path's tool name, else `{tools.DEFAULT_CODE_TOOL}`.",
                    }
                ),
                "tool_args": {"type": "object", "description": "The tool's arguments (original shape)."},
                "conversation_id": _nullable({"anyOf": [{"const": ""}, _ref("Id")]}),
                "session_id": _nullable({"anyOf": [{"const": ""}, _ref("Id")]}),
                "agent_id": _nullable({"anyOf": [{"const": ""}, _ref("Id")]}),
                "prompt": {"description": "Flat shape: the code tool's prompt (a string)."},
                "task_id": {"description": "get_task_status: the task to report on (an Id when a string)."},
            },
        },
        "ToolAnswer": {
            "type": "object",
            "description": "What the agent says is `message`; `success:false` answers are still 200.",
            "required": ["success", "message"],
            "properties": {
                "success": {"type": "boolean"},
                "message": {"type": "string", "minLength": 1},
                "requestId": string,
                "taskId": string,
                "status": string,
                "error": string,
                "task": {"type": "object"},
                "tasks": {"type": "array", "items": {"type": "object"}},
            },
        },
        "CallbackBody": {
            "type": "object",
            "description": "cursor-runner's completion, validation-error or crash body. A non-zero `exitCode` "
            "makes the task failed even with `success:true`.",
            "required": ["requestId", "success"],
            "properties": {
                "requestId": _ref("Id"),
                "success": {"type": "boolean"},
                "exitCode": _nullable({"type": "integer"}),
                "output": _nullable(string),
                "error": _nullable(string),
                "duration": _nullable(string),
                "repository": _nullable(string),
                "branchName": _nullable(string),
                "timestamp": _nullable(string),
                "command": {"description": "Kept as sent (cursor-runner sends a list of strings)."},
            },
        },
        "CallbackAck": {
            "type": "object",
            "required": ["success", "requestId"],
            "properties": {
                "success": {"const": True},
                "requestId": string,
                "status": {
                    "enum": ["completed", "failed", "pending", "accepted"],
                    "description": "accepted: Redis was unreachable; the callback is in the local spool "
                    "(fsynced) and is recorded when Redis answers again",
                },
                "duplicate": {"const": True},
                "note": string,
            },
        },
        "AgentMessage": {
            "type": "object",
            "required": ["role", "content", "source", "timestamp"],
            "properties": {
                "role": {"enum": sorted(conversations.ROLES)},
                "content": string,
                "timestamp": timestamp,
                "source": {"enum": sorted(conversations.SOURCES)},
                "toolName": string,
                "toolArgs": {},
                "toolOutput": {},
                "status": message_status,
                "taskId": string,
            },
        },
        "AgentConversation": {
            "type": "object",
            "required": ["conversationId", "messages", "createdAt", "lastAccessedAt", "metadata"],
            "properties": {
                "conversationId": string,
                "messages": {"type": "array", "items": _ref("AgentMessage")},
                "createdAt": timestamp,
                "lastAccessedAt": timestamp,
                "agentId": string,
                "metadata": {"type": "object"},
            },
        },
        "ConversationResponse": {
            "description": "The conversation's fields at the top level, and again under `conversation`.",
            "allOf": [
                _ref("AgentConversation"),
                {
                    "type": "object",
                    "required": ["success", "conversation"],
                    "properties": {"success": {"const": True}, "conversation": _ref("AgentConversation")},
                },
            ],
        },
        "ConversationList": {
            "type": "object",
            "required": ["success", "conversations", "pagination", "total", "offset", "limit"],
            "properties": {
                "success": {"const": True},
                "conversations": {"type": "array", "maxItems": max_page, "items": _ref("AgentConversation")},
                "pagination": {
                    "type": "object",
                    "description": "What the web front end reads (SPEC §3.1); total/offset/limit repeat it.",
                    "required": ["total", "limit", "offset", "hasMore"],
                    "properties": {
                        "total": {"type": "integer", "minimum": 0},
                        "limit": {"type": "integer", "minimum": 1, "maximum": max_page},
                        "offset": {"type": "integer", "minimum": 0},
                        "hasMore": {"type": "boolean"},
                    },
                },
                "total": {"type": "integer", "minimum": 0},
                "offset": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1, "maximum": max_page},
            },
        },
        "LiveSnapshot": {
            "type": "object",
            "description": "WebSocket text frame sent right after connecting.",
            "required": ["type", "conversationId", "conversation"],
            "properties": {
                "type": {"const": "agent_conversation.snapshot"},
                "conversationId": string,
                "conversation": _ref("AgentConversation"),
            },
        },
        "LiveUpdate": {
            "type": "object",
            "description": "WebSocket text frame sent on every change of the conversation.",
            "required": ["type", "conversationId", "conversation"],
            "properties": {
                "type": {"const": "agent_conversation.updated"},
                "conversationId": string,
                "conversation": _ref("AgentConversation"),
                "reason": {"enum": ["created", "message", "tool_call", "tool_result", "delivered", "resync"]},
            },
        },
        "LiveError": {
            "type": "object",
            "description": "WebSocket text frame for an unknown or malformed conversation id.",
            "required": ["type", "error", "conversationId"],
            "properties": {"type": {"const": "error"}, "error": string, "conversationId": string},
        },
        "NewConversation": {
            "type": "object",
            "properties": {
                "conversationId": _nullable(
                    {
                        "allOf": [_ref("ConversationId")],
                        "description": "Absent or null: a new UUID. An existing id is a 409.",
                    }
                ),
                "agentId": _nullable({"type": "string", "maxLength": 128}),
                "metadata": _nullable(
                    {
                        "type": "object",
                        "description": f"At most {conversations.MAX_METADATA_BYTES} bytes as JSON.",
                    }
                ),
            },
        },
        "NewMessage": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"enum": sorted(conversations.ROLES)},
                "content": {"type": "string", "maxLength": conversations.MAX_CONTENT_CHARS},
                "source": {"enum": sorted(conversations.SOURCES), "default": "text"},
                "status": _nullable(message_status),
                "toolName": _nullable({"type": "string", "maxLength": 64}),
                "toolArgs": {"description": f"Any JSON of at most {conversations.MAX_CONTENT_CHARS} bytes."},
                "toolOutput": {"description": f"Any JSON of at most {conversations.MAX_CONTENT_CHARS} bytes."},
            },
        },
        "MessageCreated": {
            "type": "object",
            "required": ["success", "message"],
            "properties": {"success": {"const": True}, "message": _ref("AgentMessage")},
        },
        "SessionRegistration": {
            "type": "object",
            "required": ["sessionUrl"],
            "properties": {
                "sessionUrl": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_URL_LENGTH,
                    "description": "ws/wss/http/https URL whose host SESSION_URL_HOSTS allows (never connected to).",
                },
                "pushUrl": _nullable(
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_URL_LENGTH,
                        "description": "A server-side bridge's WebSocket; same host rule as sessionUrl.",
                    }
                ),
                "sessionId": _nullable({"anyOf": [{"const": ""}, _ref("Id")]}),
                "agentSessionId": _nullable(_ref("Id")),
                "expiresAt": _nullable({"type": ["string", "number"]}),
                "transport": _nullable({"enum": sorted(conversations.TRANSPORTS)}),
                "metadata": _nullable(
                    {
                        "type": "object",
                        "description": f"At most {conversations.MAX_METADATA_BYTES} bytes as JSON.",
                        "properties": {
                            "elevenConversationId": _nullable(_ref("Id")),
                            "agentId": {},
                            "connectedAt": {},
                        },
                    }
                ),
            },
        },
        "SessionRegistered": {
            "type": "object",
            "required": ["success", "message", "sessionId", "pendingResults"],
            "properties": {
                "success": {"const": True},
                "message": {"const": "Session registered"},
                "sessionId": string,
                "pendingResults": {"type": "integer", "minimum": 0},
            },
        },
        "BrowserSignIn": {
            "type": "object",
            "required": ["token"],
            "properties": {"token": {"type": "string", "minLength": 1, "description": "One of BROWSER_API_TOKENS"}},
        },
        "Ok": {"type": "object", "required": ["success"], "properties": {"success": {"const": True}}},
        "EventsAck": {
            "type": "object",
            "required": ["taskIds"],
            "properties": {
                "taskIds": {"type": "array", "minItems": 1, "maxItems": max_ack_ids, "items": _ref("Id")},
            },
        },
        "EventsAcknowledged": {
            "type": "object",
            "required": ["success", "acknowledged"],
            "properties": {
                "success": {"const": True},
                "acknowledged": {"type": "array", "maxItems": max_ack_ids, "items": string},
            },
        },
    }


def _responses(max_body_bytes: int, max_callback_body_bytes: int) -> dict[str, Schema]:
    error = {"application/json": {"schema": _ref("Error")}}
    texts = {
        "BadRequest": f"Malformed JSON, JSON nested deeper than {MAX_JSON_DEPTH} levels, or a value the schema "
        "rejects (including any malformed id)",
        "Unauthorized": "Missing or wrong secret",
        "BrowserUnauthorized": "No browser identity (BROWSER_AUTH): no identity header from a trusted proxy, "
        "or a missing or wrong token",
        "TooManyRequests": "SIGNED_URL_RATE_PER_MINUTE reached for this identity; `Retry-After` says when to retry",
        "Forbidden": "Not allowed for this agent",
        "NotFound": "Unknown conversation, or no such route",
        "MethodNotAllowed": "The route does not take this method",
        "Conflict": "The resource's state forbids this (an existing id, a full conversation)",
        "PayloadTooLarge": f"Body larger than MAX_BODY_BYTES ({max_body_bytes} bytes here)",
        "CallbackTooLarge": f"Body larger than MAX_CALLBACK_BODY_BYTES ({max_callback_body_bytes} bytes here)",
        "UnsupportedMediaType": "Content-Type is not application/json (or */*+json)",
        "UpgradeRequired": "A WebSocket endpoint called without the WebSocket handshake",
        "BadGateway": "ElevenLabs answered badly",
        "Unavailable": "Disabled (ELEVENLABS_AGENT_ENABLED=false), not configured, or a dependency (Redis, "
        "ElevenLabs) is down; `message` is speakable",
    }
    return {name: {"description": text, "content": error} for name, text in texts.items()}


# Answers every agent route can give whatever its input: disabled flag or Redis down (503), a path that
# decodes to another route (404/405).
_COMMON = {"404": _error("NotFound"), "405": _error("MethodNotAllowed"), "503": _error("Unavailable")}
_BODY_ERRORS = {
    "400": _error("BadRequest"),
    "413": _error("PayloadTooLarge"),
    "415": _error("UnsupportedMediaType"),
}


def _conversation_id() -> Schema:
    return {"name": "conversation_id", "in": "path", "required": True, "schema": _ref("ConversationId")}


def _web_asset_headers() -> dict[str, Schema]:
    return {
        "ETag": {"required": True, "schema": {"type": "string"}},
        "Cache-Control": {"required": True, "schema": {"type": "string"}},
    }


def _paths(max_page: int, max_offset: int) -> dict[str, Schema]:
    tool_operation = {
        "summary": "ElevenLabs server-tool webhook (SPEC §4)",
        "description": "Answers within DISPATCH_TIMEOUT_SECONDS; cursor-runner down, slow or refusing is still a "
        "200 with `success:false` and a speakable `message`.",
        "security": [{"webhookSecret": []}, {"bearer": []}],
        "requestBody": _body("ToolCall"),
        "responses": {
            "200": _json(_ref("ToolAnswer"), "The tool's answer"),
            **_BODY_ERRORS,
            "401": _error("Unauthorized"),
            "409": _error("Conflict"),
            **_COMMON,
        },
    }
    tool_name_parameter = {
        "name": "tool_name",
        "in": "path",
        "required": True,
        "description": "The tool name when the body carries none.",
        "schema": {"type": "string", "pattern": TOOL_NAME_PATTERN},
    }
    return {
        "/health": {
            "get": {
                "summary": "Liveness (works with the feature flag off)",
                "responses": {"200": _json(_ref("Health"), "The process serves")},
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness: Redis answers PING and the service is not draining",
                "responses": {
                    "200": {"description": "Ready", "content": {"application/health+json": {"schema": _ref("Ready")}}},
                    "503": {
                        "description": "Not ready",
                        "content": {"application/health+json": {"schema": _ref("Ready")}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition",
                "responses": {
                    "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/config": {
            "get": {
                "summary": "Non-secret configuration",
                "responses": {"200": _json(_ref("Config"), "Configuration")},
            }
        },
        "/config/health": {
            "get": {
                "summary": "Dependency view for the web frontend (bounded time)",
                "responses": {"200": _json(_ref("ConfigHealth"), "Dependencies")},
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
                "summary": "A signed ElevenLabs conversation URL (valid 15 minutes) for a private agent",
                "parameters": [
                    {
                        "name": "agentId",
                        "in": "query",
                        "required": False,
                        "description": "Empty or absent: ELEVENLABS_AGENT_ID. Only configured agents are signed for.",
                        "schema": {"anyOf": [{"const": ""}, _ref("Id")]},
                    }
                ],
                "responses": {
                    "200": _json(_ref("SignedUrl"), "Signed URL"),
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
                    "200": _json(_ref("Ok"), "Signed in; the cookie is set"),
                    **_BODY_ERRORS,
                    "401": _error("Unauthorized"),
                    **_COMMON,
                },
            },
            "delete": {
                "summary": "Sign out: clear the session cookie",
                "responses": {"200": _json(_ref("Ok"), "Cookie cleared"), "400": _error("BadRequest"), **_COMMON},
            },
        },
        "/agent-tools": {"post": {**tool_operation, "operationId": "agentTools"}},
        "/agent-tools/{tool_name}": {
            "post": {**tool_operation, "operationId": "agentToolsNamed", "parameters": [tool_name_parameter]}
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
                    "200": _json(_ref("CallbackAck"), "Stored (or a duplicate, or an unknown task)"),
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
                "importing it must still load). Cached 5 minutes (`Cache-Control`), then revalidated with the "
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
                "parameters": [
                    {
                        "name": "sortBy",
                        "in": "query",
                        "description": "Empty or absent: createdAt. Anything else is a 400 naming the allowed values.",
                        "schema": {"enum": ["", *conversations.SORT_BY], "default": "createdAt"},
                    },
                    {
                        "name": "sortOrder",
                        "in": "query",
                        "description": "Empty or absent: desc.",
                        "schema": {"enum": ["", *conversations.SORT_ORDERS], "default": "desc"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": max_page, "default": 20},
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": max_offset, "default": 0},
                    },
                ],
                "responses": {
                    "200": _json(_ref("ConversationList"), "A page of conversations"),
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
                    {"name": "conversationId", "in": "query", "required": True, "schema": _ref("ConversationId")}
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
                    "201": _json(_ref("ConversationResponse"), "Created"),
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
                    "200": _json(_ref("ConversationResponse"), "The conversation"),
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
                    "201": _json(_ref("MessageCreated"), "Appended"),
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
                    "200": _json(_ref("SessionRegistered"), "Registered"),
                    **_BODY_ERRORS,
                    **_COMMON,
                },
            }
        },
        "/agent-conversations/api/{conversation_id}/events": {
            "get": {
                "summary": "Server-Sent Events: task updates of the conversation (relay channel)",
                "description": "Starts with `retry: 3000`; each result is `id: <stream id>`, `event: task_update`, "
                "`data: <JSON>`; `: keep-alive` comments every SSE_KEEPALIVE_SECONDS. Results not yet "
                "acknowledged are sent again to every new subscriber. Resumable with `Last-Event-ID`.",
                "parameters": [
                    _conversation_id(),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "An event id this stream sent (empty: not resuming).",
                        "schema": {"type": "string", "pattern": "^([0-9]{1,20}(-[0-9]{1,20})?)?$"},
                    },
                    {
                        "name": "lastEventId",
                        "in": "query",
                        "required": False,
                        "description": "The same, for clients that cannot set headers (the header wins).",
                        "schema": {"type": "string", "pattern": STREAM_ID_PATTERN},
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
                    "200": _json(_ref("EventsAcknowledged"), "Task ids that were pending and now are not"),
                    **_BODY_ERRORS,
                    **_COMMON,
                },
            }
        },
    }


def _with_browser_auth(paths: dict[str, Schema]) -> dict[str, Schema]:
    """Every operation of the browser route group (access.py) declares its policy and its 401."""
    for path, operations in paths.items():
        if group_of(path) is not Group.BROWSER:
            continue
        for operation in operations.values():
            operation["security"] = [{"browserIdentity": []}, {"browserToken": []}, {"browserCookie": []}]
            operation["responses"]["401"] = _error("BrowserUnauthorized")
    return paths


@lru_cache(maxsize=8)
def _document(
    max_body_bytes: int, max_callback_body_bytes: int, max_page: int, max_offset: int, max_ack_ids: int
) -> bytes:
    return orjson.dumps(
        {
            "openapi": "3.1.0",
            "info": {
                "title": SERVICE_NAME,
                "version": __version__,
                "description": "Runs code work for ElevenLabs voice agents (SPEC §3/§4). Every error is "
                '`{"success": false, "error": "..."}`; never a 500 for anything a client sent.',
            },
            "paths": _with_browser_auth(_paths(max_page, max_offset)),
            "components": {
                "schemas": _schemas(max_page, max_ack_ids),
                "responses": _responses(max_body_bytes, max_callback_body_bytes),
                "securitySchemes": {
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
                },
            },
        }
    )


def document(
    *, max_body_bytes: int, max_callback_body_bytes: int, max_page: int, max_offset: int, max_ack_ids: int
) -> bytes:
    """The OpenAPI document as JSON bytes, with this instance's configured limits."""
    return _document(max_body_bytes, max_callback_body_bytes, max_page, max_offset, max_ack_ids)
