"""The `elevenlabs-agent` command line (SPEC §7).

Every command that talks to Redis takes `--redis-url` (default: REDIS_URL, else the local instance
that `serve --local` recorded under `.elevenlabs-agent/`), prints a table by default and JSON with
`--json`, and exits non-zero with one clear line on error.
"""

from elevenlabs_agent.cli import keys, service, spool
from elevenlabs_agent.cli.common import main

# Imported for their commands, which they attach to `main` (the `elevenlabs-agent` entry point).
__all__ = ["keys", "main", "service", "spool"]
