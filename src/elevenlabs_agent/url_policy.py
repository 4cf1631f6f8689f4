"""Which session/push URLs a client may register (SSRF guard).

A registered push URL is one our server connects to, so an unchecked one would let any browser make
the service open sockets to internal hosts. Only ws/wss/http/https URLs whose host matches
SESSION_URL_HOSTS pass; `*.example.com` matches sub-domains. Loopback and private hosts pass only when
listed exactly (tests and demos list 127.0.0.1).
"""

from __future__ import annotations

from urllib.parse import urlsplit

ALLOWED_SCHEMES = frozenset({"ws", "wss", "http", "https"})
MAX_URL_LENGTH = 4096


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower()
        pattern = pattern.rstrip(".")
        if pattern.startswith("*."):
            label = host.removesuffix(pattern[1:])
            if label != host and label and not label.endswith("."):
                return True
        elif host == pattern:
            return True
    return False


def check_url(url: str, allowed_hosts: tuple[str, ...]) -> str | None:
    """None if `url` may be registered, else the reason it may not."""
    if len(url) > MAX_URL_LENGTH:
        return "URL is too long"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "URL is malformed"
    if parts.scheme not in ALLOWED_SCHEMES:
        return "URL scheme must be ws, wss, http or https"
    if not host:
        return "URL has no host"
    if parts.username or parts.password:
        return "URL must not carry credentials in the authority"
    if not host_allowed(host, allowed_hosts):
        return f"host {host!r} is not in SESSION_URL_HOSTS"
    return None
