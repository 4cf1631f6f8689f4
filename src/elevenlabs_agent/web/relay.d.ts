// Types of relay.js (served beside it at /agent-conversations/relay.d.ts), SPEC §5.4.

/** What the relay needs of an `@elevenlabs/client` Conversation (TextConversation or VoiceConversation). */
export interface RelayConversation {
  sendContextualUpdate(text: string, options?: { contextId?: string }): void;
  sendUserMessage(text: string): void;
  /** When present and false, the conversation has ended and the relay stops. */
  isOpen?(): boolean;
}

/** One finished task, as the service's event stream carries it (`event: task_update`). */
export interface TaskUpdateEvent {
  type: "task_update";
  /** Our task id; also the ElevenLabs `context_id` of the contextual update. */
  taskId: string;
  /** Our conversation id. */
  conversationId: string;
  status: "completed" | "failed" | (string & {});
  /** What was sent with `sendContextualUpdate`. */
  text: string;
  /** ISO 8601, UTC. */
  completedAt: string;
  /** The SSE event id (resume point). */
  eventId: string;
}

export interface RelayOptions {
  /** The service's origin, e.g. "https://agent.example.com"; "" (the default) = this page's origin. */
  baseUrl?: string;
  /** Our conversation id (from POST /agent-conversations/api/new), not ElevenLabs' own. */
  conversationId: string;
  /** The live ElevenLabs conversation, once connected (`await Conversation.startSession(...)`). */
  conversation: RelayConversation;
  /** Also `sendUserMessage` a short request to announce the result, so the agent speaks now. Default false. */
  speak?: boolean;
  /**
   * Whether the event stream and the acknowledgements carry cookies (an authenticating proxy's session,
   * or the service's token cookie from POST /agent-conversations/api/auth). Default "include": the
   * service must list this page's origin in CORS_ALLOW_ORIGINS when it is another origin.
   */
  credentials?: "include" | "same-origin" | "omit";
  /** Called once per forwarded result, after it went into the conversation. */
  onResult?: (event: TaskUpdateEvent) => void;
  /** Called when something could not be done (a forward that threw, an acknowledgement refused); default console.warn. */
  onError?: (error: unknown) => void;
}

export interface Relay {
  /** Closes the event stream and every timer; acknowledgements still owed get one last try. Idempotent. */
  stop(): void;
}

/**
 * Forwards each result of the conversation once into the live ElevenLabs session and acknowledges it;
 * resumes after drops (Last-Event-ID), retries failed acknowledgements with backoff, and stops on
 * `stop()` or when the conversation ends.
 */
export declare function startRelay(options: RelayOptions): Relay;
