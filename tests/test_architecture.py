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


def test_services_leave_round_trips_to_the_stores(repo_root: Path) -> None:
    """A service composes store batches; it never opens a pipeline or a Pub/Sub, reads or holds a
    connection or decides cluster ordering (stores/batch.py does). Of redis-py it may name only the
    exception types (the import-linter contract sees just `redis`, so this checks the submodule)."""
    leak = re.compile(
        # A connection held or reached (`self.tasks.redis`, `self.pubsub_redis`), not the
        # `elevenlabs_agent.redis` package.
        r"(?<!elevenlabs_agent)\.\w*redis\b|pipeline\(|\.pubsub\(|is_cluster"
        r"|^\s*(from|import)\s+redis(?!\.exceptions\b)"
    )
    services = repo_root / "src" / "elevenlabs_agent" / "services"
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(services.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if leak.search(line)
    ]
    assert not found, "\n".join(found)
