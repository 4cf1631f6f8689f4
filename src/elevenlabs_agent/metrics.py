"""Prometheus metrics: names are a public interface (alerts and the runbook use them).

Counters get `_total` appended by the client library: `WEBHOOKS` is exposed as
`elevenlabs_agent_webhooks_total`. No label ever holds an id (conversation, task, request).

With WORKERS > 1, each worker writes its values under PROMETHEUS_MULTIPROC_DIR and /metrics adds
them up (counters, histograms) or combines them as each gauge's `multiprocess_mode` says.
"""

import functools
import os
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

PREFIX = "elevenlabs_agent_"

# RED per route (route = the route template, e.g. /agent-conversations/api/{conversation_id})
HTTP_REQUESTS = Counter(
    PREFIX + "http_requests", "HTTP requests by route template, method and status code", ["route", "method", "status"]
)
HTTP_REQUEST_DURATION = Histogram(
    PREFIX + "http_request_duration_seconds", "HTTP request latency by route template", ["route"]
)

BROWSER_AUTH = Counter(
    PREFIX + "browser_auth",
    "Browser-group requests and WebSocket handshakes by authentication outcome",
    ["outcome"],
)

# domain
WEBHOOKS = Counter(PREFIX + "webhooks", "Tool webhooks by outcome", ["outcome"])
DISPATCHES = Counter(PREFIX + "dispatches", "cursor-runner dispatches by outcome", ["outcome"])
DISPATCH_DURATION = Histogram(PREFIX + "dispatch_duration_seconds", "cursor-runner dispatch latency")
CALLBACKS = Counter(PREFIX + "callbacks", "cursor-runner callbacks by outcome", ["outcome"])
DELIVERIES = Counter(PREFIX + "deliveries", "Result deliveries by channel and outcome", ["channel", "outcome"])
INFLIGHT_DELIVERIES = Gauge(
    PREFIX + "inflight_deliveries", "Deliveries running in the background now", multiprocess_mode="livesum"
)
SSE_SUBSCRIBERS = Gauge(
    PREFIX + "sse_subscribers", "Open SSE event streams on this instance", multiprocess_mode="livesum"
)
WEBSOCKET_SUBSCRIBERS = Gauge(
    PREFIX + "websocket_subscribers",
    "Open live-update WebSockets (/agent-conversations/api/ws) on this instance",
    multiprocess_mode="livesum",
)
WEBSOCKET_CONNECTIONS = Counter(
    PREFIX + "websocket_connections",
    "Live-update WebSocket handshakes by outcome (accepted, origin_rejected, disabled, invalid_id, "
    "unknown_conversation, redis_unavailable)",
    ["outcome"],
)
WEBSOCKET_FRAMES = Counter(
    PREFIX + "websocket_frames", "Frames sent to live-update WebSockets by type (snapshot, updated, error)", ["type"]
)
WEBSOCKET_FRAMES_DROPPED = Counter(
    PREFIX + "websocket_frames_dropped",
    "Update frames a slow WebSocket client skipped (a newer frame with the whole conversation replaced them)",
)

# state of the service and of Redis (the keyspace gauges are refreshed by a bounded background scan)
REDIS_UP = Gauge(PREFIX + "redis_up", "1 if Redis answered the last PING, else 0", multiprocess_mode="livemin")
DRAINING = Gauge(PREFIX + "draining", "1 while the instance drains for shutdown", multiprocess_mode="livemax")
ACTIVE_SESSIONS = Gauge(PREFIX + "active_sessions", "Live session registrations in Redis", multiprocess_mode="livemax")
PENDING_TASKS = Gauge(
    PREFIX + "pending_tasks", "Tasks waiting for their cursor-runner callback", multiprocess_mode="livemax"
)
OLDEST_PENDING_TASK_AGE = Gauge(
    PREFIX + "oldest_pending_task_age_seconds", "Age of the oldest pending task", multiprocess_mode="livemax"
)
STUCK_PENDING_TASKS = Gauge(
    PREFIX + "stuck_pending_tasks",
    "Tasks pending for longer than 1 h (their callback is lost)",
    multiprocess_mode="livemax",
)
RESULTS_WAITING = Gauge(
    PREFIX + "results_waiting",
    "Results stored but not yet confirmed by any delivery channel",
    multiprocess_mode="livemax",
)
OLDEST_RESULT_WAITING_AGE = Gauge(
    PREFIX + "oldest_result_waiting_age_seconds",
    "Age of the oldest result not yet confirmed delivered",
    multiprocess_mode="livemax",
)
KEYSPACE_SCAN_DURATION = Gauge(
    PREFIX + "keyspace_scan_duration_seconds", "Duration of the last keyspace gauge scan", multiprocess_mode="livemax"
)
KEYSPACE_SCAN_TIMESTAMP = Gauge(
    PREFIX + "keyspace_scan_timestamp_seconds",
    "Unix time of the last successful keyspace gauge scan",
    multiprocess_mode="livemax",
)

# callback spool (issue 13): callbacks journaled locally while Redis could not record them
CALLBACKS_SPOOLED = Counter(PREFIX + "callbacks_spooled", "Callbacks written to the local spool (Redis unreachable)")
CALLBACKS_SPOOL_REFUSED = Counter(
    PREFIX + "callbacks_spool_refused", "Callbacks the spool could not take (answered 503)", ["reason"]
)
CALLBACKS_REPLAYED = Counter(
    PREFIX + "callbacks_replayed", "Spooled callbacks replayed into Redis by outcome", ["outcome"]
)
CALLBACKS_DISCARDED = Counter(
    PREFIX + "callbacks_discarded",
    "Spooled callbacks dropped at replay (forged secret, unknown task, invalid or torn record)",
    ["reason"],
)
CALLBACK_SPOOL_RECORDS = Gauge(
    PREFIX + "callback_spool_records", "Callbacks waiting in the local spool", multiprocess_mode="livesum"
)
CALLBACK_SPOOL_BYTES = Gauge(
    PREFIX + "callback_spool_bytes", "Bytes of spool journal waiting to be replayed", multiprocess_mode="livesum"
)
CALLBACK_SPOOL_OLDEST_AGE = Gauge(
    PREFIX + "callback_spool_oldest_age_seconds",
    "Age of the oldest callback waiting in the local spool (0 when empty)",
    multiprocess_mode="livemax",
)


def exposition() -> bytes:
    """The text format for /metrics: this process's registry, or every worker's values combined."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


Labelled = TypeVar("Labelled", Counter, Gauge, Histogram)


@functools.cache
def labelled(metric: Labelled, *values: str) -> Labelled:
    """`metric.labels(*values)`, looked up once per process: `labels()` validates and takes a lock on
    every call, which cost more than the increment on the webhook paths (py-spy, issue 16)."""
    return metric.labels(*values)
