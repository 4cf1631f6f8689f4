"""Decoding request bodies into models, and the one place that words their errors.

msgspec validates types and constraints (patterns, lengths, enums); its error text ("Expected `str`,
got `int` - at `$.role`") is replaced here by the service's own sentences, which clients and tests
rely on. A model words its fields in `ERRORS`: one sentence for any error of a field, or a pair
(wrong type or length, any other broken constraint such as a pattern). A check msgspec cannot
express is made in the model's `__post_init__`, whose ValueError text is used as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, TypeVar

import msgspec

from elevenlabs_agent import limits
from elevenlabs_agent.errors import InvalidInput

# Patterns are Python's `\A…\Z` form (msgspec runs `re.search`); http/openapi.py writes them as `^…$`.
# The pattern bounds the length; min/max are only said in the document (no second check per field).
Id = Annotated[
    str,
    msgspec.Meta(
        pattern=limits.ID_REGEX.pattern,
        extra_json_schema={"minLength": 1, "maxLength": limits.ID_MAX_LENGTH},
        description=f"An id that becomes part of a Redis key name: {limits.ID_RULE} "
        "(starting with a letter or digit). Anything else is a 400.",
    ),
]
# An empty string means "absent" here (what ElevenLabs sends for an unmapped dynamic variable).
OptionalId = (
    Annotated[str, msgspec.Meta(pattern=limits.OPTIONAL_ID_REGEX.pattern, description="Empty means absent.")] | None
)

_PATH = re.compile(r" - at `\$[^`]*`$")


# A check of one well-typed field that needs more than the model knows (the service's URL policy):
# the error sentence, or None.
FieldCheck = Callable[[str, Any], "str | None"]


class Model(msgspec.Struct):
    """A request body. `ERRORS` words its fields' errors; `NOT_OBJECT` a body that is no object."""

    ERRORS: ClassVar[dict[str, str | tuple[str, str]]] = {}
    NOT_OBJECT: ClassVar[str] = limits.NOT_AN_OBJECT

    @classmethod
    def field_error(cls, name: str, value: Any) -> str | None:
        """A rule on one field beyond its type (its `__post_init__` enforces it too)."""
        return None


M = TypeVar("M", bound=Model)


def decode(model: type[M], body: Any, check: FieldCheck | None = None) -> M:
    """`body` (parsed JSON) as a `model`, or InvalidInput with the service's wording. `check` is not
    run on a valid body (the caller runs it): it only takes part in choosing which error to report."""
    if not isinstance(body, dict):
        raise InvalidInput(model.NOT_OBJECT)
    try:
        return msgspec.convert(body, model)
    except msgspec.ValidationError as exc:
        raise InvalidInput(error_message(model, body, str(exc), check)) from None


def error_message(model: type[Model], body: dict[str, Any], text: str, check: FieldCheck | None = None) -> str:
    """The sentence for the first field, in the model's order, that is wrong (msgspec reports the
    first in the body's order, and missing fields last); `text` when every field is right on its own
    (an error of `__post_init__` across fields, already worded)."""
    for field in msgspec.structs.fields(model):
        if field.encode_name not in body:
            if field.required:
                return _worded(model, field.name, type_error=True)
            continue
        value = body[field.encode_name]
        try:
            msgspec.convert(value, field.type)
        except msgspec.ValidationError as exc:
            return _worded(model, field.name, type_error=_is_type_or_length_error(str(exc)))
        if error := model.field_error(field.name, value) or (check and check(field.name, value)):
            return error
    return _PATH.sub("", text)


def _is_type_or_length_error(text: str) -> bool:
    return text.startswith("Expected `") and ("`, got `" in text or "` of length " in text)


def _worded(model: type[Model], name: str, *, type_error: bool) -> str:
    wording = model.ERRORS.get(name, f"{name} is invalid")
    if isinstance(wording, tuple):
        return wording[0] if type_error else wording[1]
    return wording
