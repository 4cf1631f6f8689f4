"""`serve` with WORKERS > 1: one listening socket shared by several worker processes.

A Python process serves on one core; the hot paths need more. The supervisor owns what must exist
once — the socket, the embedded Redis (in `serve.run`), the metrics directory — and starts
`elevenlabs-agent serve --worker-fd N` processes that accept on the inherited socket. SIGTERM/SIGINT
are passed on: each worker drains exactly as a single instance does (readiness 503, drain period,
graceful shutdown, exit 0). A worker that dies on its own is replaced. The supervisor exits 0 once
every worker has stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from elevenlabs_agent import events
from elevenlabs_agent.logging import get_logger
from elevenlabs_agent.settings import Settings

log = get_logger()
RESTART_DELAY_SECONDS = 1.0


class Supervisor:
    def __init__(self, settings: Settings, redis_url: str, listener: socket.socket) -> None:
        self.settings = settings
        self.listener = listener
        self.redis_url = redis_url
        self.stopping = False
        self.workers: dict[int, subprocess.Popen[bytes]] = {}

    def run(self) -> None:
        s = self.settings
        listener = self.listener
        metrics_dir = tempfile.mkdtemp(prefix="elevenlabs-agent-metrics-")
        env = {**os.environ, "REDIS_URL": self.redis_url, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        try:
            for index in range(s.workers):
                self._start(index, listener, env)
            self._supervise(listener, env, metrics_dir)
        finally:
            listener.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _start(self, index: int, listener: socket.socket, env: dict[str, str]) -> None:
        fd = listener.fileno()
        argv = [sys.executable, "-m", "elevenlabs_agent", "serve", "--worker-fd", str(fd)]
        argv += ["--supervisor-pid", str(os.getpid())]
        self.workers[index] = subprocess.Popen(argv, env=env, pass_fds=(fd,))
        log.info(events.WORKER_STARTED, worker=index, pid=self.workers[index].pid)

    def _supervise(self, listener: socket.socket, env: dict[str, str], metrics_dir: str) -> None:
        while self.workers:
            for index, process in list(self.workers.items()):
                code = process.poll()
                if code is None:
                    continue
                mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
                del self.workers[index]
                if not self.stopping:
                    log.error(events.WORKER_EXITED, worker=index, pid=process.pid, exitCode=code)
                    time.sleep(RESTART_DELAY_SECONDS)
                    self._start(index, listener, env)
            time.sleep(0.1)

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        # A second signal is forwarded too: the workers then stop at once.
        self.stopping = True
        for process in self.workers.values():
            if process.poll() is None:
                process.send_signal(sig)
