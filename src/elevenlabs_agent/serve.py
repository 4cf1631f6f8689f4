"""`elevenlabs-agent serve`: uvicorn with drain-on-SIGTERM and the embedded Redis default."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from elevenlabs_agent import events
from elevenlabs_agent.http.app import create_app, create_metrics_app
from elevenlabs_agent.http.protocol import HttpProtocol
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.redis.server import RedisServer
from elevenlabs_agent.runtime import Runtime
from elevenlabs_agent.settings import Settings
from elevenlabs_agent.workers import Supervisor

log = get_logger()
# How long a drain waits for live-update sockets to send their close frames.
WEBSOCKET_CLOSE_SECONDS = 2.0
# Allocations (less deallocations) between young-generation collections; CPython's default is 700.
GC_THRESHOLD = 10_000


class DrainingServer(uvicorn.Server):
    """First SIGTERM/SIGINT: readiness turns 503 at once, requests are still served for the drain
    period (so a load balancer can take us out), then uvicorn's graceful shutdown runs. A second
    signal exits at once. Exit status is 0 either way (uvicorn would re-raise the signal)."""

    def __init__(
        self,
        config: uvicorn.Config,
        runtime: Runtime,
        drain_seconds: float,
        shutdown_timeout: float,
        supervisor_pid: int | None = None,
        companion: tuple[uvicorn.Server, list[socket.socket] | None] | None = None,
    ) -> None:
        super().__init__(config)
        self.companion = companion
        self.runtime = runtime
        self.drain_seconds = drain_seconds
        self.shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False
        # Given by the supervisor, not read from getppid() here: a worker can be orphaned before this.
        self.supervisor_pid = supervisor_pid

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        if self.companion is None:
            await super().serve(sockets)
            return
        # The METRICS_PORT listener lives exactly as long as the main one: probes there see the drain.
        server, companion_sockets = self.companion
        task = asyncio.create_task(server.serve(companion_sockets))
        try:
            await super().serve(sockets)
        finally:
            server.should_exit = True
            await task

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt a log write or a metrics update that holds a lock, so it
        # only sets flags and hands everything else to the event loop.
        if self._loop is None or self._signalled:
            self.should_exit = True
            self.force_exit = True
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.runtime.delivery.close_streams)
                self._loop.call_soon_threadsafe(self._close_websockets)
            return
        self._signalled = True
        self._loop.call_soon_threadsafe(self._start_drain, sig)

    async def on_tick(self, counter: int) -> bool:
        # A worker whose supervisor died (SIGKILL, OOM) drains and exits instead of serving on as an
        # orphan nobody will stop.
        if self.supervisor_pid is not None and counter % 10 == 0 and os.getppid() != self.supervisor_pid:
            self.handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)

    def _start_drain(self, sig: int) -> None:
        self.runtime.start_draining()
        log.info(events.SERVICE_DRAINING, signal=sig, drainSeconds=self.drain_seconds)
        assert self._loop is not None
        self._loop.call_later(self.drain_seconds, self._finish)

    def _finish(self) -> None:
        # Open SSE streams would hold uvicorn's graceful shutdown until its timeout: end them now.
        self.runtime.delivery.close_streams()
        self.runtime.stop_deadline = time.monotonic() + self.shutdown_timeout
        self._close_websockets().add_done_callback(self._exit)

    def _close_websockets(self) -> asyncio.Task[None]:
        """Close live-update sockets with 1001 (going away) before uvicorn's own shutdown would close
        them with 1012; browsers reconnect, through the load balancer, to an instance still serving."""
        return asyncio.ensure_future(self.runtime.live.close_all(timeout=WEBSOCKET_CLOSE_SECONDS))

    def _exit(self, _: object = None) -> None:
        self.should_exit = True


@contextlib.contextmanager
def redis_for(settings: Settings) -> Iterator[str]:
    """The configured Redis URL, or an embedded redis-server (AOF on, data under a local directory)."""
    if settings.redis_url:
        yield settings.redis_url
        return
    # appendfsync always: an acknowledged callback must survive a crash (README, "Durability").
    server = RedisServer(Path(settings.embedded_redis_dir).resolve() / "redis", appendfsync="always")
    server.start()
    log.info(events.EMBEDDED_REDIS_STARTED, port=server.port, directory=str(server.directory))
    try:
        yield server.url
    finally:
        server.stop()
        log.info(events.EMBEDDED_REDIS_STOPPED)


class PortInUse(RuntimeError):
    pass


def listen(settings: Settings) -> socket.socket:
    """The listening socket, bound before anything else starts: a second `serve` on a busy port fails
    at once with one clear line, before its embedded Redis, its lifespan or any `service.started`."""
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((settings.host, settings.port))
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {settings.port} on {settings.host} is in use (another serve?): stop it or set PORT"
            ) from None
        raise
    listener.set_inheritable(True)
    return listener


def run(
    settings: Settings,
    worker_fd: int | None = None,
    supervisor_pid: int | None = None,
    listener: socket.socket | None = None,
    metrics_fd: int | None = None,
) -> None:
    """Serve in this process, or (WORKERS > 1) supervise worker processes that share one socket."""
    if worker_fd is not None:
        metrics_sockets = None if metrics_fd is None else [socket.socket(fileno=metrics_fd)]
        _serve(settings, settings.redis_url or "", [socket.socket(fileno=worker_fd)], supervisor_pid, metrics_sockets)
        return
    listener = listener or listen(settings)
    log.info(events.SERVICE_STARTING, host=settings.host, port=settings.port, workers=settings.workers)
    with redis_for(settings) as redis_url:
        if settings.workers > 1:
            Supervisor(settings, redis_url, listener).run()
        else:
            _serve(settings, redis_url, [listener])


def _serve(
    settings: Settings,
    redis_url: str,
    sockets: list[socket.socket],
    supervisor_pid: int | None = None,
    metrics_sockets: list[socket.socket] | None = None,
) -> None:
    app = create_app(settings, redis_url)
    companion = None
    if settings.metrics_port is not None:
        metrics_app = create_metrics_app(app.state.runtime)
        metrics_config = _config(metrics_app, settings, settings.metrics_port, lifespan="off")
        companion = (uvicorn.Server(metrics_config), metrics_sockets)
    server = DrainingServer(
        _config(app, settings, settings.port),
        app.state.runtime,
        settings.drain_seconds,
        settings.shutdown_timeout_seconds,
        supervisor_pid=supervisor_pid,
        companion=companion,
    )
    _settle_gc()
    server.run(sockets)


def _settle_gc() -> None:
    """Keep the cyclic GC off the request tail. What start-up built (modules, the app, settings) is
    frozen out of every later collection: under load a full collection walked all of it, 11 times in
    15 s of callbacks, up to 71 ms each, 563 ms in all (issue 16). A larger first generation also
    collects the short-lived request objects less often: 1,409 young collections took 369 ms, now
    188 take 24 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def _config(app: object, settings: Settings, port: int, lifespan: str = "auto") -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=port,
        loop="auto",
        http=HttpProtocol,
        lifespan=lifespan,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        # No "server: uvicorn" on every answer: it names our software to any caller, and each header
        # costs uvicorn two regex checks per response.
        server_header=False,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,  # type: ignore[arg-type]
        # The client address must be the TCP peer: browser authentication trusts identity headers
        # by the peer (TRUSTED_PROXY_CIDRS), and X-Forwarded-For would let any caller name one.
        proxy_headers=False,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        # Clients only send small keep-alives; a larger frame is refused (close 1009).
        ws_max_size=65_536,
        # permessage-deflate keeps a zlib compressor and decompressor per socket (about 45 KiB, most
        # of an idle socket's cost, bench/live_updates.py); updates are small and sent rarely.
        ws_per_message_deflate=False,
    )
