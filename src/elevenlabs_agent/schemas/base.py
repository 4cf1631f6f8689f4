"""Decoding request bodies into models, and the one place that words their errors.

msgspec validates types and constraints (patterns, lengths, enums); its error text ("Expected `str`,
got `int` - at `$.role`") is mapped here to the service's own sentences, which clients and tests rely
on. A model words its fields in `ERRORS`: one sentence for any error of a field, or a pair (wrong
type, broken constraint). A check msgspec cannot express is made in the model's `__post_init__`,
whose ValueError text is used as it is.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, TypeVar

import msgspec

from elevenlabs_agent import limits
from elevenlabs_agent.services.errors import InvalidInput

Id = Annotated[str, msgspec.Meta(pattern=limits.ID_REGEX.pattern, extra_json_schema={"pattern": limits.ID_PATTERN})]
# An empty string means "absent" here (what ElevenLabs sends for an unmapped dynamic variable).
OptionalId = (
    Annotated[
        str,
        msgspec.Meta(
            pattern=limits.OPTIONAL_ID_REGEX.pattern,
            extra_json_schema={"pattern": f"^({limits.ID_CHARS})?$", "description": "Empty means absent."},
        ),
    ]
    | None
)

_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<path>[^`]+)`")


class Model(msgspec.Struct):
    """A request body. `ERRORS` words its fields' errors; `NOT_OBJECT` a body that is no object."""

    ERRORS: ClassVar[dict[str, str | tuple[str, str]]] = {}
    NOT_OBJECT: ClassVar[str] = limits.NOT_AN_OBJECT


M = TypeVar("M", bound=Model)


def decode(model: type[M], body: Any) -> M:
    """`body` (parsed JSON) as a `model`, or InvalidInput with the service's wording."""
    if not isinstance(body, dict):
        raise InvalidInput(model.NOT_OBJECT)
    try:
        return msgspec.convert(body, model)
    except msgspec.ValidationError as exc:
        raise InvalidInput(error_message(model, str(exc))) from None


def error_message(model: type[Model], text: str) -> str:
    """msgspec's error text as the sentence the service answers with."""
    if missing := _MISSING.match(text):
        return _worded(model, missing["path"], type_error=True)
    located = _PATH.search(text)
    path = located["path"] if located else ""
    reason = text[: located.start()] if located else text
    if not path:  # raised by __post_init__: already worded
        return reason
    return _worded(model, path, type_error=reason.startswith("Expected `") and "`, got `" in reason)


def _worded(model: type[Model], path: str, *, type_error: bool) -> str:
    wording = model.ERRORS.get(path) or model.ERRORS.get(re.split(r"[.\[]", path)[0]) or f"{path} is invalid"
    if isinstance(wording, tuple):
        return wording[0] if type_error else wording[1]
    return wording
