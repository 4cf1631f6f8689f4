"""A fast loopback cursor-runner for load runs: accepts every dispatch and never calls back."""

from typing import Any

import orjson


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request_id = orjson.loads(body).get("id", "") if body else ""
    reply = orjson.dumps({"success": True, "message": "Request queued", "requestId": request_id})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": reply})
