"""Run an ASGI app on 127.0.0.1 inside the current event loop (uvicorn, real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

import uvicorn
from starlette.types import ASGIApp

STOP_TIMEOUT = 15.0


class LocalServer:
    """The socket is bound at construction, so the port is known before the app exists (a service
    needs its own URL in its settings); `app` may be set until `start()`."""

    def __init__(self, app: ASGIApp | None = None, port: int = 0) -> None:
        self.app = app
        # IPPROTO_TCP named explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP,
        # and without it every keep-alive request waits ~40 ms for a delayed ACK.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port: int = self._socket.getsockname()[1]
        self.server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert self.app is not None, "set LocalServer.app before start()"
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
            ws_ping_interval=None,
            proxy_headers=False,  # the service's own setting: the client address is the TCP peer
        )
        self.server = uvicorn.Server(config)
        self._task = asyncio.create_task(self.server.serve(sockets=[self._socket]))
        while not self.server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._task is None or self.server is None:
            return
        self.server.should_exit = True
        done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT)
        if not done:
            # uvicorn's shutdown stuck (seen about once in 15 runs tearing down a Redis Cluster stack,
            # cause not found yet): show what it waits for, then force it instead of hanging the caller.
            print(f"LocalServer on port {self.port}: graceful stop exceeded {STOP_TIMEOUT} s", file=sys.stderr)
            for task in asyncio.all_tasks():
                task.print_stack(limit=8, file=sys.stderr)
            self.server.force_exit = True
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=STOP_TIMEOUT)
        with contextlib.suppress(asyncio.CancelledError):
            if self._task.done():
                self._task.result()
        self._task = None
        self._socket.close()

    async def __aenter__(self) -> LocalServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
