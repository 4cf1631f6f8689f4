"""elevenlabs-agent: ElevenLabs server tools → cursor-runner → results back into the live conversation."""

SERVICE_NAME = "elevenlabs-agent"
__version__ = "0.1.0"
