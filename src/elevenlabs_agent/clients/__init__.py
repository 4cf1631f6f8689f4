"""Outbound clients: cursor-runner and ElevenLabs."""
