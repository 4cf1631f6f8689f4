"""Small things many test modules share."""

import asyncio
from typing import Any

import orjson
import websockets
import websockets.asyncio.client

# The browser routes' default policy (BROWSER_AUTH=proxy): an identity header from a trusted
# (loopback) proxy. Test clients of browser routes send it as the front end's proxy would.
BROWSER_IDENTITY = {"X-Forwarded-User": "test-user"}


def connect_ws(uri: str, **options: Any) -> websockets.asyncio.client.connect:
    """`websockets.connect` as a browser behind the authenticating proxy: with the identity header."""
    headers = {**BROWSER_IDENTITY, **dict(options.pop("additional_headers", None) or {})}
    return websockets.connect(uri, additional_headers=headers, **options)


# How long a test waits for a live-update frame before failing.
FRAME_TIMEOUT = 10.0


async def next_frame(ws: Any, timeout: float = FRAME_TIMEOUT, *, skip_resync: bool = True) -> dict[str, Any]:
    """The next frame; a `resync` (sent when the instance's Pub/Sub subscription was established after
    this socket subscribed, e.g. right after startup) is skipped unless asked for."""
    while True:
        frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
        if not (skip_resync and frame.get("reason") == "resync"):
            return frame
