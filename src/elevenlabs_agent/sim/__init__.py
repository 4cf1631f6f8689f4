"""Loopback stand-ins for the outside world (cursor-runner, ElevenLabs), speaking their wire formats.

Used by `elevenlabs-agent demo` and by the test suite: both drive the real service over real sockets.
"""
