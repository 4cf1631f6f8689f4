"""A loopback TCP proxy in front of Redis that counts round trips, and can drop a connection at
the worst moment for a client: after Redis ran a command, before its reply reaches the client.

A round trip is a request burst from the client followed by the server's answer: we count the
times a connection's traffic turns from server->client (or nothing) to client->server. Measured on
the wire, so pipelines and scripts count as what they really cost.
"""

from __future__ import annotations

import asyncio
import contextlib


class RoundTripProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.round_trips = 0
        self.commands_bytes = bytearray()
        self._server: asyncio.Server | None = None
        self.port = 0
        self._drop_marker: bytes | None = None
        self.dropped = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def command_names(self) -> list[str]:
        """The name of every command sent since the last reset (parsed from RESP arrays)."""
        names, data, i = [], bytes(self.commands_bytes), 0
        while i < len(data):
            assert data[i : i + 1] == b"*", "expected a RESP array"
            end = data.index(b"\r\n", i)
            count, i = int(data[i + 1 : end]), end + 2
            for n in range(count):
                end = data.index(b"\r\n", i)
                length = int(data[i + 1 : end])
                if n == 0:
                    names.append(data[end + 2 : end + 2 + length].decode().upper())
                i = end + 2 + length + 2
        return names

    def drop_reply_to(self, marker: bytes) -> None:
        """Once: forward the next request holding `marker` to Redis, then close the client's
        connection as soon as Redis answers it, without passing the answer on."""
        self._drop_marker = marker

    def reset(self) -> None:
        self.round_trips = 0
        self.commands_bytes.clear()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        awaiting_answer = False
        drop_next_answer = False

        async def upstream() -> None:
            nonlocal awaiting_answer, drop_next_answer
            while data := await client_reader.read(65536):
                if not awaiting_answer:
                    self.round_trips += 1
                    awaiting_answer = True
                if self._drop_marker is not None and self._drop_marker in data:
                    self._drop_marker, drop_next_answer = None, True
                self.commands_bytes += data
                server_writer.write(data)
                await server_writer.drain()
            server_writer.close()

        async def downstream() -> None:
            nonlocal awaiting_answer
            while data := await server_reader.read(65536):
                awaiting_answer = False
                if drop_next_answer:
                    self.dropped += 1
                    client_writer.transport.abort()
                    server_writer.transport.abort()
                    return
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        with contextlib.suppress(Exception):
            await asyncio.gather(upstream(), downstream())
