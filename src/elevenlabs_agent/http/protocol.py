"""uvicorn's httptools protocol, sending each response in one write.

uvicorn writes a response's head and its body with two `transport.write` calls, and the transport
sends each at once: two `send` syscalls and two TCP segments per answer; the second cost about 6 %
of the service's CPU on the webhook routes (py-spy, issue 16). `OneWriteTransport` keeps what one
event-loop step writes and hands it to the transport in one piece: when the response is complete, or
at the next step (a streamed body, an error answer).

Only HTTP uses it: a connection upgraded to a WebSocket gets the socket's own transport back, so
the WebSocket protocol sees what it always saw.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HttpProtocol", "OneWriteTransport"]


class OneWriteTransport:
    """A transport that joins the writes of one loop step into one. Whatever would end or bypass the
    stream (close, write_eof, a switch to another protocol) sends what it holds first; abort drops it,
    as abort drops the transport's own buffer."""

    __slots__ = ("_loop", "_pending", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._pending: list[bytes | bytearray | memoryview] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_write_buffer_size(self) -> int:
        held = sum(len(data) for data in self._pending) if self._pending else 0
        return held + self.transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        # get_extra_info, pause_reading, resume_reading, set_protocol, ...: the transport's own.
        return getattr(self.transport, name)


class HttpProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=HttpProtocol)`: uvicorn's protocol on a `OneWriteTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        # The answer is whole: send it now rather than at the next loop step.
        if isinstance(self.transport, OneWriteTransport):
            self.transport.flush()
        super().on_response_complete()

    def handle_websocket_upgrade(self) -> None:
        joined = self.transport
        if isinstance(joined, OneWriteTransport):
            joined.flush()
            self.transport = joined.transport
        super().handle_websocket_upgrade()
