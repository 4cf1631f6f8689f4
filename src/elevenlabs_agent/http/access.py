"""Who may call what: every path belongs to one route group, and each group has one policy.

| group    | paths                                                  | policy                                |
|----------|--------------------------------------------------------|---------------------------------------|
| webhooks | /agent-tools, /agent-tools/{tool}, /callback           | their own secrets (checked by routes) |
| probes   | /health, /ready                                        | open                                  |
| metrics  | /metrics                                               | network policy (or METRICS_PORT)      |
| public   | /openapi.json, relay.js, relay.d.ts, .../api/auth      | open: no data (auth takes a token)    |
| browser  | everything else: /agent-conversations/**, /signed-url, | BROWSER_AUTH                          |
|          | /config, /config/health, unknown paths                 |                                       |

The edge middleware asks `group_of(path)` for every HTTP request and WebSocket handshake and, for
the browser group, `BrowserAuth.identify(scope)` before anything else runs. Unknown paths fall in
the browser group, so a route added later is closed until it is put in another group on purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from starlette.types import Scope

from elevenlabs_agent.settings import Settings

TOKEN_COOKIE = "elevenlabs_agent_token"
AUTH_PATH = "/agent-conversations/api/auth"
MAX_IDENTITY_LENGTH = 256


class Group(StrEnum):
    WEBHOOKS = "webhooks"
    PROBES = "probes"
    METRICS = "metrics"
    PUBLIC = "public"
    BROWSER = "browser"


_EXACT = {
    "/agent-tools": Group.WEBHOOKS,
    "/callback": Group.WEBHOOKS,
    "/health": Group.PROBES,
    "/ready": Group.PROBES,
    "/metrics": Group.METRICS,
    "/openapi.json": Group.PUBLIC,
    "/agent-conversations/relay.js": Group.PUBLIC,
    "/agent-conversations/relay.d.ts": Group.PUBLIC,
    AUTH_PATH: Group.PUBLIC,
}


def group_of(path: str) -> Group:
    if (group := _EXACT.get(path)) is not None:
        return group
    if path.startswith("/agent-tools/"):
        return Group.WEBHOOKS
    return Group.BROWSER


@dataclass(frozen=True)
class Identity:
    """Who a browser request speaks for. `ref` is what logs and rate limits see: a hash, never the
    name or token itself."""

    ref: str

    @classmethod
    def of(cls, kind: str, value: str) -> Identity:
        return cls(kind + ":" + hashlib.sha256(value.encode()).hexdigest()[:16])


ANONYMOUS = Identity("none:anonymous")


@dataclass(frozen=True)
class Refusal:
    outcome: str  # a metric label value: missing, untrusted_peer, invalid_token, invalid_identity
    message: str


class BrowserAuth:
    """BROWSER_AUTH: `proxy` trusts an identity header from TRUSTED_PROXY_CIDRS peers only, `token`
    takes a bearer token (header or HttpOnly cookie) from BROWSER_API_TOKENS, `none` lets anyone in."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.browser_auth
        self.header = settings.browser_auth_header.lower().encode("latin-1")
        self.trusted = tuple(ipaddress.ip_network(c, strict=False) for c in settings.trusted_proxy_cidrs)
        # Only digests are kept and compared, each in constant time.
        self.token_digests = tuple(_digest(t) for t in settings.browser_tokens)

    def identify(self, scope: Scope) -> Identity | Refusal:
        if self.mode == "none":
            return ANONYMOUS
        if self.mode == "token":
            return self._by_token(scope)
        return self._by_proxy(scope)

    def token_valid(self, token: str) -> bool:
        digest = _digest(token)
        # Every configured token is compared, so the time taken says nothing about which matched.
        return sum(hmac.compare_digest(digest, known) for known in self.token_digests) > 0

    def _by_proxy(self, scope: Scope) -> Identity | Refusal:
        value = header(scope, self.header)
        if value is None:
            return Refusal("missing", "authentication required (no identity from the authenticating proxy)")
        if not self._peer_trusted(scope):
            return Refusal("untrusted_peer", "authentication required (identity header from an untrusted peer)")
        if not 0 < len(value) <= MAX_IDENTITY_LENGTH or not value.isprintable():
            return Refusal("invalid_identity", "authentication required (malformed identity header)")
        return Identity.of("user", value)

    def _peer_trusted(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            peer = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(peer in network for network in self.trusted)

    def _by_token(self, scope: Scope) -> Identity | Refusal:
        token = bearer(scope) or _cookie(scope, TOKEN_COOKIE)
        if token is None:
            return Refusal("missing", "authentication required (Authorization: Bearer <token> or the session cookie)")
        if not self.token_valid(token):
            return Refusal("invalid_token", "invalid token")
        return Identity.of("token", token)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header (name in lower case), as sent."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def bearer(scope: Scope) -> str | None:
    """The token of `Authorization: Bearer <token>` (webhook secrets and browser tokens alike)."""
    value = header(scope, b"authorization")
    if value is None or value[:7].lower() != "bearer ":
        return None
    return value[7:].strip() or None


def _cookie(scope: Scope, name: str) -> str | None:
    cookies = header(scope, b"cookie")
    if cookies is None:
        return None
    for part in cookies.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None
