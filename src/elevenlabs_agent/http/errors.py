"""JSON error responses and request-body reading: a client never sees a 500 page or a stack trace."""

from __future__ import annotations

from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from elevenlabs_agent import errors, events
from elevenlabs_agent.http.access import header
from elevenlabs_agent.limits import MAX_JSON_DEPTH, shallow_by_count
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.services import speech

log = get_logger()

STATUS_BY_ERROR: dict[type[errors.ServiceError], int] = {
    errors.InvalidInput: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.RateLimited: 429,
    errors.UpgradeRequired: 426,
    errors.Unavailable: 503,
    errors.UpstreamFailed: 502,
}


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, error: str, /, **extra: Any) -> JSONResponse:
    return JSONResponse({"success": False, "error": error, **extra}, status_code=status)


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body as parsed JSON, enforcing content type (415), size (413) and syntax (400)."""
    return parse_json(await read_body(request, max_bytes))


async def read_body(request: Request, max_bytes: int) -> bytearray:
    """The raw body of a JSON request: content type (415), size (413) and emptiness (400) checked."""
    content_type = (header(request.scope, b"content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise BodyError(415, "Content-Type must be application/json")
    declared = header(request.scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyError(413, f"body is larger than {max_bytes} bytes")
    body = bytearray()
    # The ASGI messages themselves: Request.stream's async generator cost more than the loop.
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > max_bytes:
            raise BodyError(413, f"body is larger than {max_bytes} bytes")
    if not body.strip():
        raise BodyError(400, "body is empty; a JSON object is required")
    return body


def parse_json(body: bytes | bytearray) -> Any:
    """`read_body`'s bytes parsed: syntax (400) and depth (400) checked."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BodyError(400, "body is not valid JSON") from None
    if not shallow_by_count(body) and _too_deep(parsed, MAX_JSON_DEPTH):
        raise BodyError(400, f"JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    return parsed


def _too_deep(value: Any, limit: int) -> bool:
    """Iterative depth check: a deeply nested body must not reach code that recurses over it."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


async def handle_body_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyError)
    log.info(events.HTTP_BAD_REQUEST, path=request.url.path, status=exc.status, error=exc.message)
    return error_response(exc.status, exc.message)


async def handle_service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ServiceError)
    status = next(code for cls, code in STATUS_BY_ERROR.items() if isinstance(exc, cls))
    if status == 400:
        log.info(events.HTTP_BAD_REQUEST, path=request.url.path, status=status, error=exc.message)
    response = error_response(status, exc.message, **exc.extra)
    if isinstance(exc, errors.RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "route not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, message)


async def handle_redis_error(request: Request, exc: Exception) -> Response:
    log.error(events.REDIS_UNAVAILABLE, path=request.url.path, error=type(exc).__name__)
    return error_response(503, "storage (Redis) is unavailable", message=speech.STORAGE_DOWN)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.error(events.HTTP_UNHANDLED_ERROR, path=request.url.path, exc_info=exc)
    return error_response(500, "internal error")


EXCEPTION_HANDLERS = {
    BodyError: handle_body_error,
    errors.ServiceError: handle_service_error,
    HTTPException: handle_http_exception,
    RedisError: handle_redis_error,
    Exception: handle_unexpected,
}
