"""Redis stores: one module owns one key family, its TTL and its value shape (`results` and
`tool_calls` own none: on one server they run the other stores' scripts as one).

`KEY_FAMILIES` is the single list the CLI and the runbook read, so an operator's view of the keys
can never drift from what the service writes.
"""

from dataclasses import dataclass

from elevenlabs_agent.stores import aliases, conversations, locks, outbox, ratelimits, sessions, tasks
from elevenlabs_agent.stores.aliases import AliasStore
from elevenlabs_agent.stores.conversations import ConversationStore
from elevenlabs_agent.stores.outbox import Outbox
from elevenlabs_agent.stores.ratelimits import RateLimitStore
from elevenlabs_agent.stores.sessions import SessionStore
from elevenlabs_agent.stores.tasks import TaskStore


@dataclass(frozen=True)
class KeyFamily:
    name: str
    pattern: str  # a SCAN MATCH pattern
    redis_type: str
    default_ttl: int | None  # seconds; None = persistent
    holds: str


KEY_FAMILIES: tuple[KeyFamily, ...] = (
    KeyFamily("sessions", sessions.SCAN_PATTERN, "hash", sessions.DEFAULT_TTL, sessions.HOLDS),
    KeyFamily("tasks", tasks.SCAN_PATTERN, "hash", tasks.DEFAULT_TTL, tasks.HOLDS),
    KeyFamily("conversations", conversations.SCAN_PATTERN, "hash", None, conversations.HOLDS),
    KeyFamily("conversation_index", conversations.INDEX_KEY, "zset", None, conversations.INDEX_HOLDS),
    KeyFamily(
        "conversation_index_last_accessed",
        conversations.ACCESSED_INDEX_KEY,
        "zset",
        None,
        conversations.ACCESSED_INDEX_HOLDS,
    ),
    KeyFamily(
        "conversation_index_message_count", conversations.COUNT_INDEX_KEY, "zset", None, conversations.COUNT_INDEX_HOLDS
    ),
    KeyFamily("aliases", aliases.SCAN_PATTERN, "string", aliases.DEFAULT_TTL, aliases.HOLDS),
    KeyFamily("event_streams", outbox.STREAM_SCAN_PATTERN, "stream", outbox.DEFAULT_TTL, outbox.STREAM_HOLDS),
    KeyFamily("pending_results", outbox.PENDING_SCAN_PATTERN, "hash", outbox.DEFAULT_TTL, outbox.PENDING_HOLDS),
    KeyFamily("locks", locks.SCAN_PATTERN, "string", locks.DEFAULT_TTL, locks.HOLDS),
    KeyFamily("rate_limits", ratelimits.SCAN_PATTERN, "string", ratelimits.WINDOW_SECONDS, ratelimits.HOLDS),
)


def family(name: str) -> KeyFamily:
    return next(f for f in KEY_FAMILIES if f.name == name)


@dataclass(frozen=True)
class Stores:
    """One instance's stores, as `Runtime.build` wires them for the services and housekeeping."""

    tasks: TaskStore
    sessions: SessionStore
    aliases: AliasStore
    conversations: ConversationStore
    outbox: Outbox
    rate_limits: RateLimitStore
