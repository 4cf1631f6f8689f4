"""Validation of ids that become parts of Redis key names (the rule itself: limits.py)."""

import re

from elevenlabs_agent.limits import ID_PATTERN as _ID_PATTERN
from elevenlabs_agent.limits import is_valid_id

ID_PATTERN = re.compile(_ID_PATTERN)

__all__ = ["ID_PATTERN", "is_valid_id"]
