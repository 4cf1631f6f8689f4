"""What the routes answer: the documented shape of every JSON response (the OpenAPI document's
response components are generated from these; the fuzz suite checks every answer against them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from msgspec import UNSET, Meta, Struct, UnsetType

from elevenlabs_agent import SERVICE_NAME, limits
from elevenlabs_agent.clients import cursor_runner
from elevenlabs_agent.schemas.conversations import Role, Source, Status

Timestamp = Annotated[str, Meta(description="ISO 8601, UTC")]
NonNegative = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]
# Strings with an enum in the document: a Literal cannot be made of a constant (SERVICE_NAME) for
# the type checker, and msgspec would sort the runner's states (documented in the probe's order).
Service = Annotated[str, Meta(extra_json_schema={"enum": [SERVICE_NAME]})]
Connection = Literal["connected", "disconnected"]
RunnerState = Annotated[
    str,
    Meta(
        description="GET /health of cursor-runner: 2xx, another HTTP answer, no answer.",
        extra_json_schema={"enum": list(get_args(cursor_runner.RunnerState))},
    ),
]


class Error(Struct):
    """Every 4xx/5xx answer. `message`, when present, is a sentence a voice agent can say."""

    success: Literal[False]
    error: Annotated[str, Meta(min_length=1)]
    message: str | UnsetType = UNSET
    conversationId: str | UnsetType = UNSET
    agentId: str | UnsetType = UNSET


class CallbackSpool(Struct):
    """Callbacks spooled locally while Redis was down, not yet replayed."""

    records: Count | UnsetType = UNSET
    bytes: Count | UnsetType = UNSET
    oldestAgeSeconds: NonNegative | UnsetType = UNSET
    maxBytes: Count | UnsetType = UNSET
    writable: bool | UnsetType = UNSET


class Health(Struct):
    status: Literal["ok"]
    service: Service
    version: str
    redis: Connection
    draining: bool
    uptimeSeconds: NonNegative
    timestamp: Timestamp
    callbackSpool: Annotated[CallbackSpool | None, Meta(description="null: the spool is off")] | UnsetType = UNSET


class Check(Struct):
    status: Literal["pass", "warn", "fail"]
    observedValue: float | bool | str | UnsetType = UNSET
    observedUnit: str | UnsetType = UNSET
    time: Timestamp | UnsetType = UNSET


class Ready(Struct):
    """application/health+json (draft-inadarei-api-health-check)"""

    status: Literal["pass", "fail"]
    service: Service
    checks: dict[str, list[Check]]


class PublicConfig(Struct, forbid_unknown_fields=True):
    """Non-secret configuration only: no secret value is ever part of it."""

    agentId: str | None
    agentUrl: str
    cursorRunnerUrl: str
    webhookSecretConfigured: bool
    redisUrl: Literal["configured", "embedded"]
    hasApiKey: bool
    enabled: bool
    browserAuth: Literal["proxy", "token", "none"]


class Config(Struct):
    success: Literal[True]
    config: PublicConfig


class Dependencies(Struct):
    """Plain strings: the web front end renders them as text (SPEC §3.1)."""

    redis: Connection
    cursorRunner: RunnerState


class RedisCheck(Struct):
    status: Connection
    latencyMs: NonNegative


class RunnerCheck(Struct):
    status: RunnerState
    detail: str


class DependencyChecks(Struct):
    """Per-check detail."""

    redis: RedisCheck
    cursorRunner: RunnerCheck


class ConfigHealth(Struct):
    service: Service
    status: Literal["ok", "degraded"]
    dependencies: Dependencies
    checks: DependencyChecks
    timestamp: Timestamp


class SignedUrl(Struct):
    signedUrl: Annotated[str, Meta(min_length=1)]
    expiresAt: Timestamp


class ToolAnswer(Struct):
    """What the agent says is `message`; `success:false` answers are still 200."""

    success: bool
    message: Annotated[str, Meta(min_length=1)]
    requestId: str | UnsetType = UNSET
    taskId: str | UnsetType = UNSET
    status: str | UnsetType = UNSET
    error: str | UnsetType = UNSET
    task: dict[str, Any] | UnsetType = UNSET
    tasks: list[dict[str, Any]] | UnsetType = UNSET


class CallbackAck(Struct):
    success: Literal[True]
    requestId: str
    status: (
        Annotated[
            Literal["completed", "failed", "pending", "accepted"],
            Meta(
                description="accepted: Redis was unreachable; the callback is in the local spool (fsynced) and is "
                "recorded when Redis answers again"
            ),
        ]
        | UnsetType
    ) = UNSET
    duplicate: Literal[True] | UnsetType = UNSET
    note: str | UnsetType = UNSET


class AgentMessage(Struct):
    role: Role
    content: str
    timestamp: Timestamp
    source: Source
    toolName: str | UnsetType = UNSET
    toolArgs: Any = UNSET
    toolOutput: Any = UNSET
    status: Status | UnsetType = UNSET
    taskId: str | UnsetType = UNSET


class AgentConversation(Struct):
    conversationId: str
    messages: list[AgentMessage]
    createdAt: Timestamp
    lastAccessedAt: Timestamp
    metadata: dict[str, Any]
    agentId: str | UnsetType = UNSET


# kw_only: required fields after the conversation's optional agentId.
class ConversationResponse(AgentConversation, kw_only=True):
    """The conversation's fields at the top level, and again under `conversation`."""

    success: Literal[True]
    conversation: AgentConversation


PageSize = Annotated[int, Meta(ge=1, le=limits.MAX_PAGE)]


class Pagination(Struct):
    """What the web front end reads (SPEC §3.1); total/offset/limit repeat it."""

    total: Count
    limit: PageSize
    offset: Count
    hasMore: bool


class ConversationList(Struct):
    success: Literal[True]
    conversations: Annotated[list[AgentConversation], Meta(max_length=limits.MAX_PAGE)]
    pagination: Pagination
    total: Count
    offset: Count
    limit: PageSize


class LiveSnapshot(Struct):
    """WebSocket text frame sent right after connecting."""

    type: Literal["agent_conversation.snapshot"]
    conversationId: str
    conversation: AgentConversation


class LiveUpdate(Struct):
    """WebSocket text frame sent on every change of the conversation."""

    type: Literal["agent_conversation.updated"]
    conversationId: str
    conversation: AgentConversation
    reason: Literal["created", "message", "tool_call", "tool_result", "delivered", "resync"] | UnsetType = UNSET


class LiveError(Struct):
    """WebSocket text frame for an unknown or malformed conversation id."""

    type: Literal["error"]
    error: str
    conversationId: str


class MessageCreated(Struct):
    success: Literal[True]
    message: AgentMessage


class SessionRegistered(Struct):
    success: Literal[True]
    message: Literal["Session registered"]
    sessionId: str
    pendingResults: Count


class Ok(Struct):
    success: Literal[True]


class EventsAcknowledged(Struct):
    success: Literal[True]
    acknowledged: Annotated[list[str], Meta(max_length=limits.MAX_ACK_IDS)]


# Parts of a response, written in place in the document (not as components of their own).
NESTED: tuple[type[Struct], ...] = (
    CallbackSpool,
    Check,
    PublicConfig,
    Dependencies,
    RedisCheck,
    RunnerCheck,
    DependencyChecks,
    Pagination,
)
RESPONSES: tuple[type[Struct], ...] = (
    Error,
    Health,
    Ready,
    Config,
    ConfigHealth,
    SignedUrl,
    ToolAnswer,
    CallbackAck,
    ConversationResponse,
    ConversationList,
    LiveSnapshot,
    LiveUpdate,
    LiveError,
    MessageCreated,
    SessionRegistered,
    Ok,
    EventsAcknowledged,
)
