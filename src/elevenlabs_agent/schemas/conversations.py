"""The browser's request bodies and query parameters (SPEC §3, §3.1, §5.4)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args

import msgspec
import orjson
from msgspec import Meta

from elevenlabs_agent import limits
from elevenlabs_agent.errors import InvalidInput
from elevenlabs_agent.schemas.base import Id, Model, decode
from elevenlabs_agent.stores.conversations import SORT_INDEXES

Role = Literal["assistant", "system", "tool", "user"]
Source = Literal["system_event", "text", "tool_output", "voice"]
Status = Literal["completed", "failed", "pending"]
Transport = Literal["webrtc", "websocket"]
ROLES = frozenset(get_args(Role))
SOURCES = frozenset(get_args(Source))
STATUSES = frozenset(get_args(Status))
# Path segments of the conversations API that an id would be shadowed by.
RESERVED_CONVERSATION_IDS = frozenset({"list", "new", "ws"})
_DIGITS = re.compile(r"[0-9]{1,20}")


def _one_of(name: str, values: frozenset[str]) -> str:
    return f"{name} must be one of: " + ", ".join(sorted(values))


def _at_most(name: str, length: int) -> str:
    return f"{name} must be a string of at most {length} characters"


ShortText = Annotated[str, Meta(max_length=limits.MAX_SHORT_TEXT)] | None
ToolName = Annotated[str, Meta(max_length=limits.TOOL_NAME_MAX_LENGTH)] | None
Metadata = Annotated[dict[str, Any], Meta(description=f"At most {limits.MAX_METADATA_BYTES} bytes as JSON.")] | None


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    if metadata is not None and len(orjson.dumps(metadata)) > limits.MAX_METADATA_BYTES:
        raise ValueError(f"metadata must be at most {limits.MAX_METADATA_BYTES} bytes of JSON")


class NewConversation(Model):
    conversationId: (
        Annotated[
            str,
            Meta(
                pattern=limits.ID_REGEX.pattern,
                description="Absent or null: a new UUID. An existing id is a 409.",
                extra_json_schema={"not": {"enum": sorted(RESERVED_CONVERSATION_IDS)}},
            ),
        ]
        | None
    ) = None
    agentId: ShortText = None
    metadata: Metadata = None

    ERRORS: ClassVar[dict[str, str | tuple[str, str]]] = {
        "conversationId": ("conversationId must be a string", limits.must_be_id("conversationId")),
        "agentId": _at_most("agentId", limits.MAX_SHORT_TEXT),
        "metadata": "metadata must be an object",
    }

    @classmethod
    def field_error(cls, name: str, value: Any) -> str | None:
        if name == "conversationId" and value in RESERVED_CONVERSATION_IDS:
            return f"conversationId {value!r} is reserved"
        return None

    def __post_init__(self) -> None:
        if (error := self.field_error("conversationId", self.conversationId)) is not None:
            raise ValueError(error)
        _check_metadata(self.metadata)


class NewMessage(Model):
    role: Role
    content: Annotated[str, Meta(max_length=limits.MAX_CONTENT_CHARS)]
    source: Source = "text"
    status: Status | None = None
    toolName: ToolName = None
    toolArgs: Annotated[Any, Meta(description=f"Any JSON of at most {limits.MAX_CONTENT_CHARS} bytes.")] = None
    toolOutput: Annotated[Any, Meta(description=f"Any JSON of at most {limits.MAX_CONTENT_CHARS} bytes.")] = None

    ERRORS: ClassVar[dict[str, str | tuple[str, str]]] = {
        "role": _one_of("role", ROLES),
        "content": f"content must be a string of at most {limits.MAX_CONTENT_CHARS} characters",
        "source": _one_of("source", SOURCES),
        "status": _one_of("status", STATUSES),
        "toolName": _at_most("toolName", limits.TOOL_NAME_MAX_LENGTH),
    }

    def __post_init__(self) -> None:
        for name in ("toolArgs", "toolOutput"):
            value = getattr(self, name)
            if value is not None and len(orjson.dumps(value)) > limits.MAX_CONTENT_CHARS:
                raise ValueError(f"{name} is too large")

    def to_message(self) -> dict[str, Any]:
        """An AgentMessage with only the documented fields that were given."""
        fields = msgspec.structs.asdict(self)
        return {k: v for k, v in fields.items() if v is not None}


def parse_message(body: Any) -> dict[str, Any]:
    """An AgentMessage from a client, with only the documented fields kept."""
    return decode(NewMessage, body).to_message()


_SESSION_METADATA = {
    "elevenConversationId": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": limits.ID_PATTERN}]},
    "agentId": {},
    "connectedAt": {},
}


# One sentence for any of the three ids a registration makes aliases of.
_SESSION_IDS_RULE = "session and ElevenLabs conversation ids must be " + limits.ID_RULE


class SessionRegistration(Model):
    sessionUrl: Annotated[
        str,
        Meta(
            min_length=1,
            # Not enforced here: a longer URL is refused by the URL policy, with its reason.
            extra_json_schema={"maxLength": limits.MAX_URL_LENGTH},
            description="ws/wss/http/https URL whose host SESSION_URL_HOSTS allows (never connected to).",
        ),
    ]
    pushUrl: (
        Annotated[
            str,
            Meta(
                max_length=limits.MAX_URL_LENGTH,
                description="A server-side bridge's WebSocket; same host rule as sessionUrl.",
            ),
        ]
        | None
    ) = None
    transport: Transport | None = None
    sessionId: (
        Annotated[
            str,
            Meta(
                max_length=limits.ID_MAX_LENGTH,
                pattern=limits.OPTIONAL_ID_REGEX.pattern,
                description="Empty or absent: a new UUID.",
            ),
        ]
        | None
    ) = None
    agentSessionId: Annotated[str, Meta(max_length=limits.ID_MAX_LENGTH, pattern=limits.ID_REGEX.pattern)] | None = None
    expiresAt: str | int | float | None = None
    metadata: (
        Annotated[
            dict[str, Any],
            Meta(
                description=f"At most {limits.MAX_METADATA_BYTES} bytes as JSON.",
                extra_json_schema={"properties": _SESSION_METADATA},
            ),
        ]
        | None
    ) = None

    ERRORS: ClassVar[dict[str, str | tuple[str, str]]] = {
        "sessionUrl": "sessionUrl is required",
        "pushUrl": _at_most("pushUrl", limits.MAX_URL_LENGTH),
        "sessionId": (_at_most("sessionId", limits.ID_MAX_LENGTH), _SESSION_IDS_RULE),
        "agentSessionId": (_at_most("agentSessionId", limits.ID_MAX_LENGTH), _SESSION_IDS_RULE),
        "expiresAt": "expiresAt must be a string or a number",
        "transport": "transport must be 'websocket' or 'webrtc'",
        "metadata": "metadata must be an object",
    }

    def __post_init__(self) -> None:
        _check_metadata(self.metadata)
        # Inside free-form metadata, so no field type can say it: the one id checked by hand.
        eleven_id = self.eleven_conversation_id
        if eleven_id is not None and not isinstance(eleven_id, str):
            raise ValueError("metadata.elevenConversationId must be a string")
        if eleven_id is not None and not limits.is_valid_id(eleven_id):
            raise ValueError(_SESSION_IDS_RULE)

    @property
    def eleven_conversation_id(self) -> Any:
        return (self.metadata or {}).get("elevenConversationId")


class EventsAck(Model):
    taskIds: Annotated[list[Id], Meta(min_length=1, max_length=limits.MAX_ACK_IDS)]

    NOT_OBJECT: ClassVar[str] = f"taskIds must be a list of 1-{limits.MAX_ACK_IDS} task ids"
    ERRORS: ClassVar[dict[str, str | tuple[str, str]]] = {"taskIds": NOT_OBJECT}


class BrowserSignIn(Model):
    token: Annotated[str, Meta(min_length=1, description="One of BROWSER_API_TOKENS")]

    NOT_OBJECT: ClassVar[str] = "token must be a non-empty string"
    ERRORS: ClassVar[dict[str, str | tuple[str, str]]] = {"token": NOT_OBJECT}


if TYPE_CHECKING:
    SortBy = str
else:
    # The store's indexes are the orders there are: the Literal is made from them, not restated.
    SortBy = Literal[tuple(SORT_INDEXES)]
SortOrder = Literal["asc", "desc"]
_PAGE_PARAMETERS = ("limit", "offset")


class ListQuery(msgspec.Struct, frozen=True):
    """The query of `GET /agent-conversations/api/list` (SPEC §3.1): a page, in the order asked for.
    An empty sortBy or sortOrder means its default."""

    sortBy: Annotated[
        SortBy, Meta(description="Empty or absent: createdAt. Anything else is a 400 naming the allowed values.")
    ] = "createdAt"
    sortOrder: Annotated[SortOrder, Meta(description="Empty or absent: desc.")] = "desc"
    limit: Annotated[int, Meta(ge=1, le=limits.MAX_PAGE)] = limits.DEFAULT_PAGE
    offset: Annotated[int, Meta(ge=0, le=limits.MAX_OFFSET)] = 0

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> ListQuery:
        """The query from its parameters, or InvalidInput: limit and offset first, then sortBy, sortOrder."""
        given: dict[str, Any] = {name: params[name] for name in _PAGE_PARAMETERS if name in params}
        # ASCII digits only: int() would also take " 5", "1_0" and non-ASCII digits, msgspec "5.0".
        if not all(_DIGITS.fullmatch(text) for text in given.values()):
            raise InvalidInput("limit and offset must be integers")
        given = {name: int(text) for name, text in given.items()}
        given.update((name, params[name]) for name in ("sortBy", "sortOrder") if params.get(name))
        try:
            return msgspec.convert(given, cls)
        except msgspec.ValidationError as exc:
            message, extra = _list_query_error(str(exc))
            raise InvalidInput(message, **extra) from None


def _list_query_error(text: str) -> tuple[str, dict[str, Any]]:
    """The message of msgspec's first error (in limit, offset, sortBy, sortOrder order) and its extra."""
    name = text.rsplit("$.", 1)[-1].rstrip("`")
    if name in _PAGE_PARAMETERS:
        return f"limit must be 1-{limits.MAX_PAGE} and offset 0-{limits.MAX_OFFSET}", {}
    allowed = list(get_args(SortOrder) if name == "sortOrder" else SORT_INDEXES)
    return f"{name} must be one of: " + ", ".join(allowed), {"allowed": allowed}


def valid_last_event_id(value: str | None) -> str | None:
    if value is not None and not limits.is_stream_id(value):
        raise InvalidInput("Last-Event-ID must be an event id this stream sent")
    return value


def require_id(value: str, what: str = "conversation id") -> str:
    if not limits.is_valid_id(value):
        raise InvalidInput(limits.must_be_id(what))
    return value
