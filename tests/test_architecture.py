"""The layer contract (pyproject `[tool.importlinter]`): no module imports from a layer above its own,
routes reach Redis only through services, and services leave Redis round trips to the stores."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_import_layers_hold(repo_root: Path) -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=repo_root, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


# A connection held or reached (`self.tasks.redis`, `self.pubsub_redis`, `rt.stores.tasks.redis`), not
# the `elevenlabs_agent.redis` package; a pipeline, a Pub/Sub, cluster ordering; redis-py beyond its
# exception types (the import-linter contract sees just `redis`, so this checks the submodule).
LEAK = re.compile(
    r"(?<!elevenlabs_agent)\.\w*redis\b|pipeline\(|\.pubsub\(|is_cluster"
    r"|^\s*(from|import)\s+redis(?!\.exceptions\b)"
)


def leaks(directory: Path) -> tuple[int, list[str]]:
    paths = sorted(directory.rglob("*.py"))
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in paths
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if LEAK.search(line)
    ]
    return len(paths), found


def test_the_leak_pattern_catches_what_it_names() -> None:
    for line in (
        "self.tasks.redis.get(k)",
        "self.pubsub_redis.ping()",
        "async with r.pipeline() as p:",
        "from redis.asyncio import Redis",
        "if is_cluster(client):",
        "ps = client.pubsub()",
    ):
        assert LEAK.search(line), line
    for line in ("from redis.exceptions import RedisError", "from elevenlabs_agent.redis.clients import x"):
        assert not LEAK.search(line), line


def test_services_and_routes_leave_round_trips_to_the_stores(repo_root: Path) -> None:
    """A service composes store batches, and a route calls services: neither opens a pipeline or a
    Pub/Sub, reads or holds a connection or decides cluster ordering (stores/batch.py does)."""
    package = repo_root / "src" / "elevenlabs_agent"
    for layer in ("services", "http"):
        count, found = leaks(package / layer)
        assert count >= 5, f"{layer}: only {count} modules: has the layer moved?"
        assert not found, "\n".join(found)
