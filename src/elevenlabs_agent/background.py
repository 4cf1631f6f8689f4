"""The start/stop of a background loop a process runs beside its requests (housekeeping, spool replay)."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod


class BackgroundLoop(ABC):
    """Runs `_run` as one asyncio task from `start()` until `stop()` cancels it and waits for it to end,
    so that a stopped process never leaves a pass half-way through a Redis write behind."""

    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @abstractmethod
    async def _run(self) -> None: ...
