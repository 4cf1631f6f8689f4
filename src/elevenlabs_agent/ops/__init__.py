"""Operator tooling behind the CLI: inspect key families, back up, purge and restore keys."""
