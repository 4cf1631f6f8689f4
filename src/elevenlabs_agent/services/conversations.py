"""Conversations, their messages, and live-session registration."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from elevenlabs_agent import events
from elevenlabs_agent.errors import Conflict, InvalidInput, NotFound
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.schemas.conversations import (
    ListQuery,
    NewConversation,
    SessionRegistration,
)
from elevenlabs_agent.services.delivery import DeliveryService
from elevenlabs_agent.stores.aliases import AliasStore
from elevenlabs_agent.stores.conversations import Conversation, ConversationFull, ConversationStore
from elevenlabs_agent.stores.outbox import Outbox
from elevenlabs_agent.stores.sessions import SessionStore
from elevenlabs_agent.timeutil import now_iso
from elevenlabs_agent.url_policy import check_url

log = get_logger()


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

    async def create(self, new: NewConversation) -> Conversation:
        conversation_id = new.conversationId or str(uuid.uuid4())
        if not await self.conversations.create(
            conversation_id, now=now_iso(), agent_id=new.agentId, metadata=new.metadata or {}
        ):
            raise Conflict("a conversation with this id already exists", conversationId=conversation_id)
        return await self.get(conversation_id)

    async def get(self, conversation_id: str) -> Conversation:
        conversation = await self.conversations.get(conversation_id)
        if conversation is None:
            raise NotFound("conversation not found", conversationId=conversation_id)
        return conversation

    async def list(self, query: ListQuery) -> tuple[list[Conversation], int]:
        """A page in the order the front end asks for (SPEC §3.1)."""
        return await self.conversations.list(
            offset=query.offset, limit=query.limit, sort_by=query.sortBy, descending=query.sortOrder == "desc"
        )

    async def append(self, conversation_id: str, message: dict[str, Any]) -> dict[str, Any]:
        """Store a client's message (parse_message's AgentMessage), stamped now."""
        message = {**message, "timestamp": now_iso()}
        try:
            stored = await self.conversations.append_message(conversation_id, message, message["timestamp"])
        except ConversationFull:
            raise Conflict("the conversation holds the maximum number of messages") from None
        if not stored:
            raise NotFound("conversation not found", conversationId=conversation_id)
        return message

    def url_error(self, name: str, value: Any) -> str | None:
        """The SSRF guard on a registered URL (url_policy.py); a FieldCheck for decoding a
        SessionRegistration, so its error is reported in field order."""
        why = (
            check_url(value, self.allowed_hosts)
            if name in ("sessionUrl", "pushUrl") and isinstance(value, str)
            else None
        )
        return None if why is None else f"{name} rejected: {why}"

    async def register_session(self, conversation_id: str, registration: SessionRegistration) -> Registration:
        session_url, push_url = registration.sessionUrl, registration.pushUrl
        for name, url in (("sessionUrl", session_url), ("pushUrl", push_url)):
            if (error := self.url_error(name, url)) is not None:
                raise InvalidInput(error)
        transport, expires_at = registration.transport, registration.expiresAt
        session_id = registration.sessionId or str(uuid.uuid4())
        agent_session_id = registration.agentSessionId
        metadata = registration.metadata or {}
        eleven_id = registration.eleven_conversation_id
        aliases = [a for a in (eleven_id, session_id, agent_session_id) if isinstance(a, str)]
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
