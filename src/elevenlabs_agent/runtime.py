"""Everything one service instance holds: connections, stores, clients and services, wired once."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from elevenlabs_agent import metrics
from elevenlabs_agent.clients.cursor_runner import CursorRunnerClient
from elevenlabs_agent.clients.elevenlabs import ElevenLabsClient
from elevenlabs_agent.redis.clients import connect_redis
from elevenlabs_agent.redis.mux import MuxRedis
from elevenlabs_agent.redis.urls import is_single_node
from elevenlabs_agent.services.callbacks import CallbackService
from elevenlabs_agent.services.conversations import ConversationService
from elevenlabs_agent.services.delivery import DeliveryService
from elevenlabs_agent.services.live import LiveUpdates
from elevenlabs_agent.services.signed_urls import SignedUrlService
from elevenlabs_agent.services.tools import ToolService
from elevenlabs_agent.settings import Settings
from elevenlabs_agent.spool import Journal
from elevenlabs_agent.stores import Stores
from elevenlabs_agent.stores.aliases import AliasStore
from elevenlabs_agent.stores.conversation_updates import ConversationUpdates
from elevenlabs_agent.stores.conversations import ConversationStore
from elevenlabs_agent.stores.outbox import Outbox
from elevenlabs_agent.stores.ratelimits import RateLimitStore
from elevenlabs_agent.stores.sessions import SessionStore
from elevenlabs_agent.stores.tasks import TaskStore


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    blocking_redis: Redis
    stores: Stores
    cursor_runner: CursorRunnerClient
    elevenlabs: ElevenLabsClient | None
    delivery: DeliveryService
    tools: ToolService
    callbacks: CallbackService
    conversations: ConversationService
    signed_urls: SignedUrlService
    live: LiveUpdates
    journal: Journal | None = None
    draining: bool = False
    # When set (monotonic time), in-flight work must be done by then: SHUTDOWN_TIMEOUT_SECONDS
    # bounds requests and deliveries together, not each on its own.
    stop_deadline: float | None = None
    started_at: float = field(default_factory=time.time)

    @classmethod
    def build(cls, settings: Settings, redis_url: str) -> Runtime:
        s = settings
        redis = (
            MuxRedis(redis_url, s.redis_timeout_seconds)
            if is_single_node(redis_url)
            else connect_redis(redis_url, s.redis_timeout_seconds)
        )
        blocking_redis = connect_redis(redis_url, s.redis_timeout_seconds, blocking=True)
        runner_secret = s.cursor_runner_secret.get_secret_value() if s.cursor_runner_secret else None
        cursor_runner = CursorRunnerClient(s.cursor_runner_url, runner_secret, s.dispatch_timeout_seconds)
        api_key = s.elevenlabs_api_key.get_secret_value() if s.elevenlabs_api_key else ""
        elevenlabs = ElevenLabsClient(s.elevenlabs_api_url, api_key, s.upstream_timeout_seconds) if api_key else None

        tasks = TaskStore(redis, s.task_ttl_seconds)
        sessions = SessionStore(redis, s.session_ttl_seconds)
        aliases = AliasStore(redis, s.alias_ttl_seconds)
        conversations = ConversationStore(redis, s.max_messages_per_conversation)
        outbox = Outbox(redis, blocking_redis, s.outbox_ttl_seconds, s.outbox_stream_maxlen)
        rate_limits = RateLimitStore(redis)
        delivery = DeliveryService(
            outbox, sessions, tasks, conversations, s.push_timeout_seconds, s.sse_keepalive_seconds
        )
        shared = None
        if s.callback_accept_webhook_secret and s.webhook_secret is not None:
            shared = s.webhook_secret.get_secret_value() or None
        # CALLBACK_SPOOL_MAX_BYTES=0 turns the spool off: callbacks get a 503 while Redis is down.
        journal = Journal(s.spool_directory, s.callback_spool_max_bytes) if s.callback_spool_max_bytes else None
        return cls(
            settings=s,
            redis=redis,
            blocking_redis=blocking_redis,
            stores=Stores(tasks, sessions, aliases, conversations, outbox, rate_limits),
            cursor_runner=cursor_runner,
            elevenlabs=elevenlabs,
            delivery=delivery,
            tools=ToolService(tasks, conversations, sessions, aliases, cursor_runner, s.elevenlabs_agent_url),
            callbacks=CallbackService(tasks, conversations, outbox, delivery, shared, journal),
            conversations=ConversationService(conversations, sessions, aliases, outbox, delivery, s.session_url_hosts),
            signed_urls=SignedUrlService(
                elevenlabs,
                s.elevenlabs_agent_id,
                s.signed_url_agent_ids,
                rate_limits,
                s.signed_url_rate_per_minute,
            ),
            # One subscription per instance on the connection pool that already allows long waits.
            live=LiveUpdates(conversations, ConversationUpdates(blocking_redis)),
            journal=journal,
        )

    def time_left(self, default: float) -> float:
        if self.stop_deadline is None:
            return default
        return max(0.5, self.stop_deadline - time.monotonic())

    def start_draining(self) -> None:
        """Readiness fails from now on, so load balancers stop sending new work here."""
        self.draining = True
        metrics.DRAINING.set(1)

    async def redis_ping(self, timeout: float = 1.0) -> tuple[bool, float]:
        """(answered, latency in ms), bounded by `timeout` whatever redis-py's retries would do."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await self.redis.ping()
        except (RedisError, OSError, TimeoutError):
            return False, (time.perf_counter() - started) * 1000
        return True, (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        await self.cursor_runner.aclose()
        if self.elevenlabs is not None:
            await self.elevenlabs.aclose()
        await self.blocking_redis.aclose()
        await self.redis.aclose()
        if self.journal is not None:
            self.journal.close()
