"""The service's one Redis layer: URLs and connection options (`urls`, `tls`), redis-py clients for
every URL form (`clients`), the multiplexed request-path client (`mux`), the bulk reader's wire
(`bulk`), the shared socket set-up and handshake (`wire`) and the embedded server launcher (`server`).

Inside this package `import redis` still names redis-py: imports are absolute, and this package is
only ever imported as `elevenlabs_agent.redis` (never put `src/elevenlabs_agent` itself on sys.path).
"""
