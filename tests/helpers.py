"""Small things many test modules share."""

from typing import Any

import websockets
import websockets.asyncio.client

# The browser routes' default policy (BROWSER_AUTH=proxy): an identity header from a trusted
# (loopback) proxy. Test clients of browser routes send it as the front end's proxy would.
BROWSER_IDENTITY = {"X-Forwarded-User": "test-user"}


def connect_ws(uri: str, **options: Any) -> websockets.asyncio.client.connect:
    """`websockets.connect` as a browser behind the authenticating proxy: with the identity header."""
    headers = {**BROWSER_IDENTITY, **dict(options.pop("additional_headers", None) or {})}
    return websockets.connect(uri, additional_headers=headers, **options)
