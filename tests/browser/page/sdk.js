// The entry esbuild bundles into one browser module: the official ElevenLabs SDK, as a front end imports it.
export { Conversation } from "@elevenlabs/client";
