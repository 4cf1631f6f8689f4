"""Validation of ids that become parts of Redis key names.

Ids come from outside (ElevenLabs, the browser, cursor-runner). A `*`, `?`, `[`, `:`, `{`, space or
newline in a key name would break SCAN patterns, hash tags or an operator's `redis-cli` line, so only
a conservative charset is accepted.
"""

import re

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None
