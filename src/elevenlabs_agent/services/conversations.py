"""Conversations, their messages, and live-session registration."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from elevenlabs_agent import events
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.services.delivery import DeliveryService
from elevenlabs_agent.services.errors import Conflict, InvalidInput, NotFound
from elevenlabs_agent.stores.aliases import AliasStore
from elevenlabs_agent.stores.conversations import SORT_INDEXES, Conversation, ConversationFull, ConversationStore
from elevenlabs_agent.stores.ids import is_valid_id
from elevenlabs_agent.stores.outbox import Outbox
from elevenlabs_agent.stores.sessions import SessionStore
from elevenlabs_agent.timeutil import now_iso
from elevenlabs_agent.url_policy import check_url

ROLES = frozenset({"user", "assistant", "system", "tool"})
SOURCES = frozenset({"voice", "text", "tool_output", "system_event"})
STATUSES = frozenset({"pending", "completed", "failed"})
TRANSPORTS = frozenset({"websocket", "webrtc"})
SORT_ORDERS = ("asc", "desc")
SORT_BY = tuple(SORT_INDEXES)
MAX_CONTENT_CHARS = 100_000
MAX_METADATA_BYTES = 16_384

log = get_logger()


# Path segments of the conversations API that an id would be shadowed by.
RESERVED_CONVERSATION_IDS = frozenset({"list", "new", "ws"})


def require_id(value: str, what: str = "conversation id") -> str:
    if not is_valid_id(value):
        raise InvalidInput(f"{what} must be 1-128 characters of letters, digits, '_', '.', '-'")
    return value


def _one_of(value: Any, allowed: frozenset[str]) -> bool:
    """Membership that is safe for any JSON value (a list or an object is unhashable)."""
    return isinstance(value, str) and value in allowed


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], name: str, max_len: int = 256) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidInput(f"{name} must be a string of at most {max_len} characters")
    return value


def _metadata(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("metadata")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("metadata must be an object")
    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


def parse_message(body: Any) -> dict[str, Any]:
    """An AgentMessage from a client, with only the documented fields kept."""
    body = _object(body)
    role, content, source = body.get("role"), body.get("content"), body.get("source", "text")
    if not _one_of(role, ROLES):
        raise InvalidInput("role must be one of: " + ", ".join(sorted(ROLES)))
    if not isinstance(content, str) or len(content) > MAX_CONTENT_CHARS:
        raise InvalidInput(f"content must be a string of at most {MAX_CONTENT_CHARS} characters")
    if not _one_of(source, SOURCES):
        raise InvalidInput("source must be one of: " + ", ".join(sorted(SOURCES)))
    message: dict[str, Any] = {"role": role, "content": content, "source": source}
    if body.get("status") is not None:
        if not _one_of(body["status"], STATUSES):
            raise InvalidInput("status must be one of: " + ", ".join(sorted(STATUSES)))
        message["status"] = body["status"]
    if (name := _optional_str(body, "toolName", 64)) is not None:
        message["toolName"] = name
    for field in ("toolArgs", "toolOutput"):
        if body.get(field) is not None:
            if len(orjson.dumps(body[field])) > MAX_CONTENT_CHARS:
                raise InvalidInput(f"{field} is too large")
            message[field] = body[field]
    return message


@dataclass(frozen=True)
class Registration:
    session_id: str
    pending_results: int


class ConversationService:
    def __init__(
        self,
        conversations: ConversationStore,
        sessions: SessionStore,
        aliases: AliasStore,
        outbox: Outbox,
        delivery: DeliveryService,
        allowed_hosts: tuple[str, ...],
    ) -> None:
        self.conversations = conversations
        self.sessions = sessions
        self.aliases = aliases
        self.outbox = outbox
        self.delivery = delivery
        self.allowed_hosts = allowed_hosts

    async def create(self, body: Any) -> Conversation:
        body = _object(body)
        conversation_id = body.get("conversationId")
        if conversation_id is None:
            conversation_id = str(uuid.uuid4())
        elif not isinstance(conversation_id, str):
            raise InvalidInput("conversationId must be a string")
        require_id(conversation_id, "conversationId")
        if conversation_id in RESERVED_CONVERSATION_IDS:
            raise InvalidInput(f"conversationId {conversation_id!r} is reserved")
        agent_id = _optional_str(body, "agentId", 128)
        if not await self.conversations.create(
            conversation_id, now=now_iso(), agent_id=agent_id, metadata=_metadata(body)
        ):
            raise Conflict("a conversation with this id already exists", conversationId=conversation_id)
        return await self.get(conversation_id)

    async def get(self, conversation_id: str) -> Conversation:
        conversation = await self.conversations.get(require_id(conversation_id))
        if conversation is None:
            raise NotFound("conversation not found", conversationId=conversation_id)
        return conversation

    async def list(
        self, offset: int, limit: int, sort_by: str | None = None, sort_order: str | None = None
    ) -> tuple[list[Conversation], int]:
        """A page in the order the front end asks for (SPEC §3.1); absent or empty = newest first."""
        sort_by = sort_by or "createdAt"
        sort_order = sort_order or "desc"
        if sort_by not in SORT_INDEXES:
            raise InvalidInput("sortBy must be one of: " + ", ".join(SORT_BY), allowed=list(SORT_BY))
        if sort_order not in SORT_ORDERS:
            raise InvalidInput("sortOrder must be one of: " + ", ".join(SORT_ORDERS), allowed=list(SORT_ORDERS))
        return await self.conversations.list(
            offset=offset, limit=limit, sort_by=sort_by, descending=sort_order == "desc"
        )

    async def append(self, conversation_id: str, body: Any) -> dict[str, Any]:
        message = parse_message(body)
        message["timestamp"] = now_iso()
        try:
            stored = await self.conversations.append_message(require_id(conversation_id), message, message["timestamp"])
        except ConversationFull:
            raise Conflict("the conversation holds the maximum number of messages") from None
        if not stored:
            raise NotFound("conversation not found", conversationId=conversation_id)
        return message

    async def register_session(self, conversation_id: str, body: Any) -> Registration:
        require_id(conversation_id)
        body = _object(body)
        session_url = body.get("sessionUrl")
        if not isinstance(session_url, str) or not session_url:
            raise InvalidInput("sessionUrl is required")
        if (why := check_url(session_url, self.allowed_hosts)) is not None:
            raise InvalidInput(f"sessionUrl rejected: {why}")
        push_url = _optional_str(body, "pushUrl", 4096)
        if push_url is not None and (why := check_url(push_url, self.allowed_hosts)) is not None:
            raise InvalidInput(f"pushUrl rejected: {why}")
        transport = body.get("transport")
        if transport is not None and not _one_of(transport, TRANSPORTS):
            raise InvalidInput("transport must be 'websocket' or 'webrtc'")
        session_id = _optional_str(body, "sessionId", 128) or str(uuid.uuid4())
        agent_session_id = _optional_str(body, "agentSessionId", 128)
        expires_at = body.get("expiresAt")
        if expires_at is not None and (not isinstance(expires_at, str | int | float) or isinstance(expires_at, bool)):
            raise InvalidInput("expiresAt must be a string or a number")
        metadata = _metadata(body)
        eleven_id = metadata.get("elevenConversationId")
        if eleven_id is not None and not isinstance(eleven_id, str):
            raise InvalidInput("metadata.elevenConversationId must be a string")
        aliases = [a for a in (eleven_id, session_id, agent_session_id) if isinstance(a, str)]
        if any(not is_valid_id(a) for a in aliases):
            raise InvalidInput(
                "session and ElevenLabs conversation ids must be 1-128 characters of letters, digits, '_', '.', '-'"
            )
        if not await self.conversations.exists(conversation_id):
            raise NotFound("conversation not found", conversationId=conversation_id)

        fields = {
            "conversationId": conversation_id,
            "sessionUrl": session_url,
            "sessionId": session_id,
            "transport": transport or "websocket",
            "metadata": orjson.dumps(metadata).decode(),
            "registeredAt": now_iso(),
        }
        if push_url:
            fields["pushUrl"] = push_url
        if agent_session_id:
            fields["agentSessionId"] = agent_session_id
        if expires_at is not None:
            fields["expiresAt"] = str(expires_at)
        return await self._register(conversation_id, fields, aliases)

    async def _register(self, conversation_id: str, fields: dict[str, str], aliases: Sequence[str]) -> Registration:
        """Store a validated registration and its aliases, then offer the waiting results to it."""
        batch = self.sessions.batch()
        self.sessions.queue_register(batch, conversation_id, fields)
        for alias in aliases:
            self.aliases.queue_set(batch, alias, conversation_id)
        await batch.run()
        pending = await self.outbox.pending(conversation_id)
        push_url = fields.get("pushUrl")
        log.info(
            events.SESSION_REGISTERED,
            conversationId=conversation_id,
            sessionId=fields["sessionId"],
            push=bool(push_url),
            pendingResults=len(pending),
        )
        if push_url and pending:
            self.delivery.spawn(self.delivery.replay(conversation_id, push_url))
        return Registration(fields["sessionId"], len(pending))
