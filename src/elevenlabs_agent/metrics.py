"""Prometheus metrics: names are a public interface (alerts and the runbook use them)."""

from prometheus_client import Counter, Histogram

PREFIX = "elevenlabs_agent_"

HTTP_REQUESTS = Counter(
    PREFIX + "http_requests", "HTTP requests by route template and status code", ["route", "method", "status"]
)
HTTP_REQUEST_DURATION = Histogram(
    PREFIX + "http_request_duration_seconds", "HTTP request latency by route template", ["route"]
)
WEBHOOKS = Counter(PREFIX + "webhooks", "Tool webhooks by outcome", ["outcome"])
DISPATCHES = Counter(PREFIX + "dispatches", "cursor-runner dispatches by outcome", ["outcome"])
DISPATCH_DURATION = Histogram(PREFIX + "dispatch_duration_seconds", "cursor-runner dispatch latency")
CALLBACKS = Counter(PREFIX + "callbacks", "cursor-runner callbacks by outcome", ["outcome"])
DELIVERIES = Counter(PREFIX + "deliveries", "Result deliveries by channel and outcome", ["channel", "outcome"])
