"""Typed request and response models of the HTTP API (msgspec Structs: bench/schemas.py measured them
against pydantic; docs/performance.md). Routes decode bodies with them, services take them, and the
OpenAPI document's components are generated from them (http/openapi.py)."""
