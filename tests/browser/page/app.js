// A page that holds an ElevenLabs voice session the way a front end does, and relays our results into
// it with relay.js. Query: service (our origin), conversation (our conversation id), agent (agent id),
// speak=1 (startRelay's speak), text=1 (a text-only session instead of the fake microphone), hold=1
// (wait for window.relayTest.go() before starting the relay), nostop=1 (do not stop the relay on the
// SDK's onDisconnect: leave noticing the end to relay.js), token (sign in with it first:
// BROWSER_AUTH=token). window.relayConversation is the SDK session.
// Everything the test reads is on window.relayTest.
import { Conversation } from "./sdk.bundle.js";

const query = new URLSearchParams(location.search);
const service = query.get("service");
const conversationId = query.get("conversation");
const agentId = query.get("agent");
const state = (window.relayTest = {
  phase: "starting",
  elevenConversationId: null,
  results: [], // every onResult: {taskId, text, at}
  errors: [],
  disconnects: [],
});
const show = (phase) => {
  state.phase = phase;
  document.getElementById("status").textContent = phase;
};

async function api(path, init) {
  // Cookies go along (the service is another origin): the token cookie signs every request in.
  const response = await fetch(`${service}${path}`, { credentials: "include", ...init });
  if (!response.ok) throw new Error(`${init?.method ?? "GET"} ${path}: HTTP ${response.status} ${await response.text()}`);
  return response.json();
}

async function main() {
  // 0. Sign in, as a front end does with BROWSER_AUTH=token: the HttpOnly cookie then authenticates
  // every request, the relay's EventSource included (it cannot send an Authorization header).
  if (query.get("token")) {
    await api("/agent-conversations/api/auth", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: query.get("token") }),
    });
  }

  // 1. A signed URL for the private agent, from our service.
  const { signedUrl } = await api(`/signed-url?agentId=${encodeURIComponent(agentId)}`);
  show("signed");

  // 2. The SDK session (WebSocket, since the URL is signed), with the fake microphone unless text=1.
  let relay = null;
  const conversation = await Conversation.startSession({
    signedUrl,
    connectionType: "websocket",
    textOnly: query.get("text") === "1",
    onDisconnect: (details) => {
      state.disconnects.push(details?.reason ?? "unknown");
      if (query.get("nostop") !== "1") relay?.stop();
    },
    onError: (message) => state.errors.push(`sdk: ${message}`),
  });
  window.relayConversation = conversation;
  state.elevenConversationId = conversation.getId();
  show("connected");

  // 3. Register the live session with our service, as the front end does.
  await api(`/agent-conversations/api/${encodeURIComponent(conversationId)}/session`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      sessionUrl: signedUrl,
      transport: "websocket",
      metadata: { agentId, elevenConversationId: conversation.getId(), connectedAt: new Date().toISOString() },
    }),
  });
  show("registered");
  if (query.get("hold") === "1") {
    await new Promise((resolve) => (state.go = resolve));
  }

  // 4. The relay, imported from the service itself.
  const { startRelay } = await import(`${service}/agent-conversations/relay.js`);
  relay = startRelay({
    baseUrl: service,
    conversationId,
    conversation,
    speak: query.get("speak") === "1",
    onResult: (event) => state.results.push({ taskId: event.taskId, text: event.text, at: performance.now() }),
    onError: (error) => state.errors.push(`relay: ${error}`),
  });
  show("relaying");
}

main().catch((error) => {
  state.errors.push(`page: ${error?.stack ?? error}`);
  show("failed");
});
