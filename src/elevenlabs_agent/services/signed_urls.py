"""`GET /signed-url`: mint a signed ElevenLabs conversation URL for a private agent."""

from __future__ import annotations

from elevenlabs_agent import events
from elevenlabs_agent.clients.elevenlabs import ElevenLabsClient, SignedUrl, UpstreamError
from elevenlabs_agent.errors import Forbidden, InvalidInput, RateLimited, Unavailable, UpstreamFailed
from elevenlabs_agent.limits import is_valid_id, must_be_id
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.stores.ratelimits import RateLimitStore

log = get_logger()


class SignedUrlService:
    def __init__(
        self,
        client: ElevenLabsClient | None,
        default_agent_id: str | None,
        allowed_agent_ids: frozenset[str],
        limits: RateLimitStore,
        rate_per_minute: int,
    ) -> None:
        self.client = client
        self.default_agent_id = default_agent_id
        # Our API key can mint URLs for every agent of the account: only ours may be asked for.
        self.allowed_agent_ids = allowed_agent_ids
        # Each URL starts a conversation billed to the account: one identity gets a few a minute.
        self.limits = limits
        self.rate_per_minute = rate_per_minute

    async def issue(self, agent_id: str | None, identity: str) -> SignedUrl:
        agent_id = agent_id or self.default_agent_id
        if not agent_id:
            raise InvalidInput("agentId is required (no ELEVENLABS_AGENT_ID is configured)")
        if not is_valid_id(agent_id):
            raise InvalidInput(must_be_id("agentId"))
        if agent_id not in self.allowed_agent_ids:
            raise Forbidden("signed URLs are not issued for this agent", agentId=agent_id)
        if self.client is None:
            raise Unavailable("ElevenLabs is not configured (ELEVENLABS_API_KEY is not set)")
        # Counted only for requests that would mint a URL: refused input costs the account nothing.
        window = await self.limits.hit(identity)
        if window.count > self.rate_per_minute:
            log.warning(events.SIGNED_URL_RATE_LIMITED, count=window.count, retryAfter=window.retry_after)
            raise RateLimited(
                f"too many signed URLs: at most {self.rate_per_minute} a minute", retry_after=window.retry_after
            )
        try:
            signed = await self.client.signed_url(agent_id)
        except UpstreamError as exc:
            log.warning(events.SIGNED_URL_FAILED, agentId=agent_id, error=str(exc), upstreamStatus=exc.status)
            if exc.status is None:
                raise Unavailable("ElevenLabs is unreachable", agentId=agent_id) from None
            raise UpstreamFailed(str(exc), agentId=agent_id) from None
        log.info(events.SIGNED_URL_ISSUED, agentId=agent_id)
        return signed
