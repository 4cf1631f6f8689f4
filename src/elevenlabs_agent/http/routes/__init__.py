"""The route table (SPEC §3): routes parse, authenticate, call a service and render; no Redis in here.

One module per route group of http/access.py: probes (and the other operations routes), webhooks,
browser (HTTP) and live (WebSocket, relay.js).
"""

from __future__ import annotations

from starlette.routing import Route, WebSocketRoute

from elevenlabs_agent.http.access import AUTH_PATH
from elevenlabs_agent.http.routes import browser, live, probes, webhooks

METRICS_ROUTE = Route("/metrics", probes.metrics_endpoint)
METRICS_ROUTES = [Route("/health", probes.health), Route("/ready", probes.ready), METRICS_ROUTE]
ROUTES = [
    *METRICS_ROUTES,
    Route("/config", probes.config),
    Route("/config/health", probes.config_health),
    Route("/openapi.json", probes.openapi_json),
    Route("/signed-url", browser.signed_url),
    Route("/agent-tools", webhooks.agent_tools, methods=["POST"]),
    Route("/agent-tools/{tool_name}", webhooks.agent_tools, methods=["POST"]),
    Route("/callback", webhooks.callback, methods=["POST"]),
    *(Route(path, live.serve_web_asset(asset), methods=["GET"]) for path, asset in live.WEB_ASSETS.items()),
    Route(AUTH_PATH, browser.login, methods=["POST", "DELETE"]),
    Route("/agent-conversations/api/list", browser.list_conversations),
    WebSocketRoute("/agent-conversations/api/ws", live.conversation_updates),
    Route("/agent-conversations/api/ws", live.websocket_needs_upgrade),
    Route("/agent-conversations/api/new", browser.new_conversation, methods=["POST"]),
    Route("/agent-conversations/api/{conversation_id}", browser.get_conversation),
    Route("/agent-conversations/api/{conversation_id}/message", browser.append_message, methods=["POST"]),
    Route("/agent-conversations/api/{conversation_id}/session", browser.register_session, methods=["POST"]),
    Route("/agent-conversations/api/{conversation_id}/events", browser.events_stream),
    Route("/agent-conversations/api/{conversation_id}/events/ack", browser.acknowledge_events, methods=["POST"]),
]
