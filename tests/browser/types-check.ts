// Compile-only (tsc -p tests/browser): relay.d.ts accepts the official SDK's conversations, and says
// what a front end gets back. Not served, not bundled.
import { Conversation, type TextConversation, type VoiceConversation } from "@elevenlabs/client";
import { startRelay, type Relay, type TaskUpdateEvent } from "../../src/elevenlabs_agent/web/relay.js";

export async function relayEveryKind(voice: VoiceConversation, text: TextConversation): Promise<Relay[]> {
  const started = await Conversation.startSession({ signedUrl: "wss://example.invalid/", connectionType: "websocket" });
  const seen: string[] = [];
  const relays = [voice, text, started].map((conversation) =>
    startRelay({
      baseUrl: "https://agent.example.com",
      conversationId: "conversation-1",
      conversation,
      speak: true,
      onResult: (event: TaskUpdateEvent) => seen.push(`${event.taskId} ${event.status}: ${event.text}`),
      onError: (error) => seen.push(String(error)),
    }),
  );
  relays.forEach((relay) => relay.stop());
  return relays;
}

export function requiredOptions(text: TextConversation): void {
  // @ts-expect-error conversationId is required
  startRelay({ conversation: text });
  // @ts-expect-error a conversation must be able to take contextual updates
  startRelay({ conversationId: "c", conversation: { sendUserMessage: (t: string) => t } });
}
