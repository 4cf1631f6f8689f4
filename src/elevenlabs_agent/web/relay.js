// @ts-self-types="./relay.d.ts"
// relay.js: the browser half of elevenlabs-agent's relay channel (SPEC §5.4).
//
// The page that holds the ElevenLabs voice session starts it once the SDK has connected:
//
//   import { startRelay } from "https://agent.example.com/agent-conversations/relay.js";
//   const relay = startRelay({ baseUrl: "https://agent.example.com", conversationId, conversation });
//   ...
//   relay.stop();
//
// It reads the conversation's Server-Sent Events (GET /agent-conversations/api/{id}/events), forwards
// each finished task into the live conversation with conversation.sendContextualUpdate(text) (with
// the task id as context id), optionally asks the agent to announce it (speak: true), and then
// acknowledges it (POST .../events/ack), which is what stops the service offering it again.
// Delivery is at least once: a result that was forwarded but not acknowledged (the page closed in
// between) is forwarded again by the next page, into that page's new conversation.
// No dependencies, no build step; the types are in relay.d.ts beside this file.

const ACK_BATCH = 100; // the most task ids one POST .../events/ack takes
const ACK_RETRY_MS = [250, 10_000]; // first and longest wait before retrying a failed acknowledgement
const REOPEN_MS = [1_000, 30_000]; // the same for reopening an event stream the browser gave up on
const WATCH_MS = 1_000; // how often to look whether the conversation has ended

/** Starts relaying; returns `{ stop }`. See relay.d.ts for the options. */
export function startRelay({
  baseUrl = "",
  conversationId,
  conversation,
  speak = false,
  credentials = "include",
  onResult,
  onError,
} = {}) {
  if (typeof conversationId !== "string" || conversationId === "") {
    throw new TypeError("startRelay: conversationId (our conversation id) is required");
  }
  if (!conversation || typeof conversation.sendContextualUpdate !== "function") {
    throw new TypeError("startRelay: conversation must be an @elevenlabs/client Conversation");
  }
  const api = `${String(baseUrl).replace(/\/+$/, "")}/agent-conversations/api/${encodeURIComponent(conversationId)}`;
  const report = (error) => (onError ? safely(onError, error) : console.warn("relay:", error));

  const forwarded = new Set(); // task ids forwarded into this page's conversation (never twice)
  const unacknowledged = new Set(); // forwarded task ids the service has not confirmed yet
  let source = null;
  let lastEventId = "";
  let stopped = false;
  let ackTimer = 0;
  let ackWait = 0;
  let acking = false;
  let reopenTimer = 0;
  let reopenWait = 0;

  function open() {
    // A new EventSource sends no Last-Event-ID header: resume through the query parameter instead.
    // EventSource's own reconnections send the header, which the service prefers.
    const query = lastEventId ? `?lastEventId=${encodeURIComponent(lastEventId)}` : "";
    // Credentials (the authenticating proxy's cookie, or the service's token cookie) go along.
    const withCredentials = credentials === "include";
    const events = (source = new EventSource(`${api}/events${query}`, { withCredentials }));
    events.addEventListener("open", () => (reopenWait = 0));
    events.addEventListener("task_update", receive);
    events.addEventListener("error", () => {
      // After a network error or a stream the service ended (a restart), EventSource reconnects by
      // itself with Last-Event-ID. After an HTTP error status (503 during an outage) it gives up for
      // good (readyState CLOSED): then we open a new one, with backoff.
      if (stopped || events.readyState !== EventSource.CLOSED) return;
      reopenWait = nextWait(reopenWait, REOPEN_MS);
      reopenTimer = setTimeout(open, reopenWait);
    });
  }

  function receive(message) {
    if (stopped) return;
    if (message.lastEventId) lastEventId = message.lastEventId;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return report(new Error("relay: an event that is not JSON was ignored"));
    }
    const taskId = event && event.taskId;
    if (typeof taskId !== "string" || !taskId) return;
    if (!forwarded.has(taskId)) {
      if (!isOpen()) return stop(); // the conversation ended: leave the result for the next one
      try {
        conversation.sendContextualUpdate(String(event.text ?? ""), { contextId: taskId });
        if (speak) conversation.sendUserMessage(announcement(event));
      } catch (error) {
        return report(error); // not forwarded, so not acknowledged: it is offered again on reconnection
      }
      forwarded.add(taskId);
      if (onResult) safely(onResult, event);
    }
    // Offered again (a resumed stream, an acknowledgement that did not arrive): confirm it again.
    unacknowledged.add(taskId);
    scheduleAck(0);
  }

  function scheduleAck(wait) {
    if (!ackTimer && !acking) ackTimer = setTimeout(acknowledge, wait);
  }

  async function acknowledge() {
    ackTimer = 0;
    const batch = [...unacknowledged].slice(0, ACK_BATCH);
    if (batch.length === 0) return;
    acking = true;
    let retry = false;
    try {
      const response = await fetch(`${api}/events/ack`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ taskIds: batch }),
        credentials,
        keepalive: stopped, // the last try on stop() may outlive the page
      });
      if (response.ok || !retryable(response.status)) {
        batch.forEach((taskId) => unacknowledged.delete(taskId));
        if (!response.ok) report(new Error(`relay: acknowledgement refused with HTTP ${response.status}`));
      } else {
        retry = true;
      }
    } catch {
      retry = true; // the service is unreachable for now
    } finally {
      acking = false;
    }
    if (stopped) return;
    ackWait = retry ? nextWait(ackWait, ACK_RETRY_MS) : 0;
    if (unacknowledged.size) scheduleAck(ackWait);
  }

  function isOpen() {
    return typeof conversation.isOpen !== "function" || conversation.isOpen();
  }

  const watch = setInterval(() => isOpen() || stop(), WATCH_MS);

  function stop() {
    if (stopped) return;
    stopped = true;
    clearInterval(watch);
    clearTimeout(reopenTimer);
    clearTimeout(ackTimer);
    if (source) source.close();
    if (!acking && unacknowledged.size) acknowledge(); // one last try, so the next page need not repeat it
  }

  open();
  return { stop };
}

function announcement(event) {
  const outcome = event.status === "failed" ? "failed" : "finished";
  return `A code task just ${outcome}. Please tell me its result now.`;
}

function retryable(status) {
  return status === 408 || status === 429 || status >= 500;
}

function nextWait(previous, [first, longest]) {
  const wait = previous ? Math.min(previous * 2, longest) : first;
  return wait * (0.8 + Math.random() * 0.4); // jitter: pages do not retry in step after an outage
}

function safely(callback, value) {
  try {
    callback(value);
  } catch (error) {
    console.error("relay: callback failed", error);
  }
}
