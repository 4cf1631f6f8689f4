"""Configuration from environment variables (SPEC §2; names kept from the original service)."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from elevenlabs_agent import limits
from elevenlabs_agent.stores import aliases, conversations, outbox, sessions, tasks

DEFAULT_SESSION_URL_HOSTS = ("elevenlabs.io", "*.elevenlabs.io")
CommaList = Annotated[tuple[str, ...], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", frozen=True)

    host: str = "0.0.0.0"
    port: int = Field(3004, ge=0, le=65535)
    elevenlabs_agent_enabled: bool = False
    # Without a WEBHOOK_SECRET the webhook answers 503 "not configured"; this switch lets a developer
    # run it unauthenticated on purpose. Never set it where the service is reachable from outside.
    elevenlabs_agent_insecure_dev: bool = False

    redis_url: str | None = None
    embedded_redis_dir: str = ".elevenlabs-agent"

    webhook_secret: SecretStr | None = None
    # cursor-runner falls back to its own shared WEBHOOK_SECRET only when a callback URL carries no
    # secret; we always put a per-task one in, so accepting the shared secret is opt-in.
    callback_accept_webhook_secret: bool = False

    elevenlabs_api_key: SecretStr | None = None
    elevenlabs_agent_id: str | None = None
    elevenlabs_api_url: str = "https://api.elevenlabs.io"
    signed_url_allowed_agent_ids: CommaList = ()

    cursor_runner_url: str = "http://cursor-runner:3001"
    cursor_runner_secret: SecretStr | None = None
    elevenlabs_agent_url: str = Field(
        "http://elevenlabs-agent:3004", validation_alias=AliasChoices("elevenlabs_agent_url", "public_url")
    )

    cors_allow_origins: CommaList = ()
    # Who may use the browser-facing routes (README "Exposure"): an identity header from a trusted
    # authenticating proxy (default), bearer tokens, or nobody checks (explicit only).
    browser_auth: Literal["proxy", "token", "none"] = "proxy"
    browser_auth_header: str = Field("X-Forwarded-User", pattern=r"^[A-Za-z0-9-]{1,64}$")
    trusted_proxy_cidrs: CommaList = ("127.0.0.0/8", "::1/128")
    browser_api_tokens: SecretStr | None = None
    signed_url_rate_per_minute: int = Field(10, ge=1, le=100_000)
    # A second listener for /metrics and the probes (e.g. on the pod network only); /metrics then
    # leaves the main port.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    session_url_hosts: CommaList = DEFAULT_SESSION_URL_HOSTS

    session_ttl_seconds: int = Field(sessions.DEFAULT_TTL, gt=0)
    task_ttl_seconds: int = Field(tasks.DEFAULT_TTL, gt=0)
    alias_ttl_seconds: int = Field(aliases.DEFAULT_TTL, gt=0)
    outbox_ttl_seconds: int = Field(outbox.DEFAULT_TTL, gt=0)
    outbox_stream_maxlen: int = Field(outbox.DEFAULT_STREAM_MAXLEN, gt=0)
    max_messages_per_conversation: int = Field(conversations.DEFAULT_MAX_MESSAGES, gt=0)

    dispatch_timeout_seconds: float = Field(5.0, gt=0, le=60)
    push_timeout_seconds: float = Field(5.0, gt=0, le=60)
    upstream_timeout_seconds: float = Field(5.0, gt=0, le=60)
    redis_timeout_seconds: float = Field(2.0, gt=0, le=60)
    sse_keepalive_seconds: float = Field(15.0, gt=0, le=300)
    # Live-update WebSockets: a peer that does not answer a ping within the timeout is dropped.
    ws_ping_interval_seconds: float = Field(20.0, gt=0, le=300)
    ws_ping_timeout_seconds: float = Field(20.0, gt=0, le=300)
    drain_seconds: float = Field(5.0, ge=0)
    workers: int = Field(1, ge=1, le=64)
    shutdown_timeout_seconds: float = Field(30.0, gt=0)

    housekeeping_interval_seconds: float = Field(30.0, gt=0)
    housekeeping_max_keys: int = Field(200_000, gt=0)

    max_body_bytes: int = Field(limits.DEFAULT_MAX_BODY_BYTES, gt=0)
    max_callback_body_bytes: int = Field(limits.DEFAULT_MAX_CALLBACK_BODY_BYTES, gt=0)
    log_level: str = "info"
    # auto: structlog's coloured console lines on a terminal, JSON lines otherwise (files, collectors).
    log_format: Literal["auto", "json", "console"] = "auto"

    # Callbacks that arrive while Redis cannot record them are journaled here and replayed later
    # (spool.py). Unset: `spool/` under the embedded data directory. Must be a persistent disk.
    callback_spool_dir: str | None = None
    callback_spool_max_bytes: int = Field(256 * 1_048_576, ge=0)

    @field_validator(
        "cors_allow_origins", "session_url_hosts", "signed_url_allowed_agent_ids", "trusted_proxy_cidrs", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("trusted_proxy_cidrs")
    @classmethod
    def _check_cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _tokens_for_token_auth(self) -> Settings:
        if self.browser_auth == "token" and not self.browser_tokens:
            raise ValueError("BROWSER_AUTH=token needs BROWSER_API_TOKENS (a comma list of tokens)")
        return self

    @cached_property
    def browser_tokens(self) -> tuple[str, ...]:
        if self.browser_api_tokens is None:
            return ()
        return tuple(t.strip() for t in self.browser_api_tokens.get_secret_value().split(",") if t.strip())

    @cached_property
    def secret_values(self) -> tuple[str, ...]:
        """Every configured secret, for the log redactor."""
        secrets = (self.webhook_secret, self.elevenlabs_api_key, self.cursor_runner_secret)
        configured = tuple(s.get_secret_value() for s in secrets if s is not None and s.get_secret_value())
        return configured + self.browser_tokens

    @property
    def spool_directory(self) -> Path:
        return Path(self.callback_spool_dir or Path(self.embedded_redis_dir) / "spool").resolve()

    @property
    def webhook_configured(self) -> bool:
        return self.webhook_secret is not None and bool(self.webhook_secret.get_secret_value())

    @property
    def signed_url_agent_ids(self) -> frozenset[str]:
        ids = set(self.signed_url_allowed_agent_ids)
        if self.elevenlabs_agent_id:
            ids.add(self.elevenlabs_agent_id)
        return frozenset(ids)
