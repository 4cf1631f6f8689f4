"""What the service accepts, in one place: id and name shapes, sizes, page bounds, and the wording of
the errors that name them; and the few figures the HTTP layer promises its clients. The stores, the
request models (schemas/), the HTTP layer and the OpenAPI document all read these, so a limit cannot
differ between the code that enforces it and the document that describes it.

Ids become parts of Redis key names. A `*`, `?`, `[`, `:`, `{`, space or newline in a key name would
break SCAN patterns, hash tags or an operator's `redis-cli` line, so only a conservative charset is
accepted.
"""

from __future__ import annotations

import re

ID_MAX_LENGTH = 128
ID_CHARS = f"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{ID_MAX_LENGTH - 1}}}"
# `^…$` is the form JSON Schema (ECMA 262) reads; Python's `$` also matches before a final newline,
# so code matches with `fullmatch` or with the `\A…\Z` form (what msgspec's `re.search` needs).
ID_PATTERN = f"^{ID_CHARS}$"
ID_REGEX = re.compile(rf"\A{ID_CHARS}\Z")
OPTIONAL_ID_REGEX = re.compile(rf"\A(?:{ID_CHARS})?\Z")  # an empty string means "absent"
ID_RULE = f"1-{ID_MAX_LENGTH} characters of letters, digits, '_', '.', '-'"

TOOL_NAME_MAX_LENGTH = 64
TOOL_NAME_CHARS = "[A-Za-z0-9_.-]"
TOOL_NAME_PATTERN = f"^{TOOL_NAME_CHARS}{{1,{TOOL_NAME_MAX_LENGTH}}}$"
TOOL_NAME_RULE = f"1-{TOOL_NAME_MAX_LENGTH} characters of letters, digits, '_', '.', '-'"

# A Redis stream entry id "<ms>[-<seq>]" (the SSE event ids); each part below 2**64.
STREAM_ID_CHARS = "[0-9]{1,20}(-[0-9]{1,20})?"
STREAM_ID_PATTERN = f"^{STREAM_ID_CHARS}$"
OPTIONAL_STREAM_ID_PATTERN = f"^({STREAM_ID_CHARS})?$"  # the Last-Event-ID header: empty is not resuming
_STREAM_ID = re.compile(STREAM_ID_PATTERN)

MAX_PROMPT_CHARS = 50_000
MAX_CONTENT_CHARS = 100_000
MAX_METADATA_BYTES = 16_384
MAX_SHORT_TEXT = 128  # agentId: a free-form string kept in the conversation
MAX_URL_LENGTH = 4096

DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_OFFSET = 10_000_000
MAX_ACK_IDS = 100

# The HTTP layer's body limits (defaults of MAX_BODY_BYTES / MAX_CALLBACK_BODY_BYTES) and JSON depth.
DEFAULT_MAX_BODY_BYTES = 1_048_576
DEFAULT_MAX_CALLBACK_BODY_BYTES = 16 * 1_048_576
MAX_JSON_DEPTH = 32


def shallow_by_count(raw: bytes | bytearray) -> bool:
    """True when the JSON text cannot nest deeper than MAX_JSON_DEPTH: it has no more brackets than
    that (counting those in strings too). Only other texts need their parsed value walked."""
    return raw.count(b"{") + raw.count(b"[") <= MAX_JSON_DEPTH


NOT_AN_OBJECT = "body must be a JSON object"

# A request header kept for logs or CORS (X-Request-ID, Origin): longer or unprintable is ignored.
MAX_HEADER_VALUE_LENGTH = 128
# What the routes send and the OpenAPI document says: the SSE reconnection delay, how long a browser
# keeps relay.js before revalidating it (a deploy reaches every page within that time).
SSE_RETRY_MS = 3000
WEB_ASSET_MAX_AGE_SECONDS = 300


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_REGEX.match(value) is not None


def must_be_id(what: str) -> str:
    """The one wording of a malformed-id error."""
    return f"{what} must be {ID_RULE}"


def must_be_tool_name(what: str) -> str:
    return f"{what} must be {TOOL_NAME_RULE}"


def is_stream_id(value: str) -> bool:
    """A well-formed stream entry id Redis will accept: `<ms>[-<seq>]`, both below 2**64."""
    return _STREAM_ID.fullmatch(value) is not None and all(int(part) < 2**64 for part in value.split("-"))
