"""Log event names: a public interface. The runbook, alerts and dashboards match on these strings,
so rename one only together with them (tests check the runbook names only names defined here)."""

from typing import Final

# lifecycle
SERVICE_STARTING: Final = "service.starting"
SERVICE_STARTED: Final = "service.started"
SERVICE_DRAINING: Final = "service.draining"
SERVICE_STOPPING: Final = "service.stopping"
SERVICE_STOPPED: Final = "service.stopped"
EMBEDDED_REDIS_STARTED: Final = "redis.embedded_started"
EMBEDDED_REDIS_STOPPED: Final = "redis.embedded_stopped"
WORKER_STARTED: Final = "worker.started"
WORKER_EXITED: Final = "worker.exited"

# http
HTTP_REQUEST: Final = "http.request"
HTTP_BAD_REQUEST: Final = "http.bad_request"
HTTP_UNHANDLED_ERROR: Final = "http.unhandled_error"
REDIS_UNAVAILABLE: Final = "redis.unavailable"
HOUSEKEEPING_FAILED: Final = "housekeeping.failed"

# browser authentication (route group "browser")
BROWSER_AUTH_REFUSED: Final = "browser_auth.refused"
BROWSER_AUTH_DISABLED: Final = "browser_auth.disabled"
BROWSER_LOGIN: Final = "browser_auth.login"
SIGNED_URL_RATE_LIMITED: Final = "signed_url.rate_limited"

# tool webhook (ElevenLabs -> us)
WEBHOOK_UNAUTHORIZED: Final = "webhook.unauthorized"
WEBHOOK_NOT_CONFIGURED: Final = "webhook.not_configured"
WEBHOOK_RECEIVED: Final = "webhook.received"
WEBHOOK_CONVERSATION_UNMAPPED: Final = "webhook.conversation_unmapped"
TASK_CREATED: Final = "task.created"
TASK_STATUS_QUERIED: Final = "task.status_queried"

# dispatch (us -> cursor-runner)
DISPATCH_SUCCEEDED: Final = "dispatch.succeeded"
DISPATCH_FAILED: Final = "dispatch.failed"

# callback (cursor-runner -> us)
CALLBACK_ACCEPTED: Final = "callback.accepted"
CALLBACK_DUPLICATE: Final = "callback.duplicate"
CALLBACK_UNKNOWN_TASK: Final = "callback.unknown_task"
CALLBACK_UNAUTHORIZED: Final = "callback.unauthorized"
CALLBACK_TASK_FAILED: Final = "callback.task_failed"
CALLBACK_RECORDING_REPAIRED: Final = "callback.recording_repaired"

# delivery (us -> the live conversation)
SESSION_REGISTERED: Final = "session.registered"
SESSION_MISSING: Final = "delivery.no_session"
DELIVERY_PUSHED: Final = "delivery.pushed"
DELIVERY_PUSH_FAILED: Final = "delivery.push_failed"
DELIVERY_ACKNOWLEDGED: Final = "delivery.acknowledged"
DELIVERY_REPLAYED: Final = "delivery.replayed"
SSE_CONNECTED: Final = "sse.connected"
SSE_DISCONNECTED: Final = "sse.disconnected"

# signed url (us -> ElevenLabs)
SIGNED_URL_ISSUED: Final = "signed_url.issued"
SIGNED_URL_FAILED: Final = "signed_url.failed"

# conversation listing indexes
CONVERSATION_INDEX_REPAIRED: Final = "conversation.index_repaired"

# live conversation updates (WebSocket, /agent-conversations/api/ws)
WS_CONNECTED: Final = "ws.connected"
WS_DISCONNECTED: Final = "ws.disconnected"
WS_REJECTED: Final = "ws.rejected"
WS_CLOSING_FOR_DRAIN: Final = "ws.closing_for_drain"
LIVE_SUBSCRIPTION_LOST: Final = "live.subscription_lost"
# callback spool (issue 13): callbacks made durable locally while Redis could not record them.
# callback.* lines belong to a /callback request (requestId, taskId); spool.* lines come from the
# spool itself and its background replay.
CALLBACK_SPOOLED: Final = "callback.spooled"
CALLBACK_SPOOL_REFUSED: Final = "callback.spool_refused"
SPOOL_REPLAYED: Final = "spool.replayed"
SPOOL_DISCARDED: Final = "spool.discarded"
SPOOL_RECORD_SKIPPED: Final = "spool.record_skipped"
SPOOL_OPENED: Final = "spool.opened"
SPOOL_UNAVAILABLE: Final = "spool.unavailable"
CALLBACK_SPOOL_WRITE_FAILED: Final = "callback.spool_write_failed"
SPOOL_DRAINED: Final = "spool.drained"
SPOOL_REPLAY_PAUSED: Final = "spool.replay_paused"
