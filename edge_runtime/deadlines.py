"""Wall-time limits for invocations: one coarse periodic check for all of them.

A timer per request (``asyncio.timeout``) costs more than the rest of a small request's edge
work; a limit measured in seconds does not need millisecond precision.
"""

from __future__ import annotations

import asyncio

TICK_S = 0.05


class Watch:
    __slots__ = ("task", "deadline", "expired")

    def __init__(self, task: asyncio.Task, deadline: float) -> None:
        self.task, self.deadline, self.expired = task, deadline, False


class Deadlines:
    """``watch`` the current task; past its deadline it is cancelled and ``expired`` is set."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick_s = tick_s
        self._watches: set[Watch] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, timeout_s: float) -> Watch:
        loop = asyncio.get_running_loop()
        entry = Watch(asyncio.current_task(), loop.time() + timeout_s)
        self._watches.add(entry)
        if self._timer is None:
            self._timer = loop.call_later(self._tick_s, self._check)
        return entry

    def unwatch(self, entry: Watch) -> None:
        self._watches.discard(entry)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for entry in [entry for entry in self._watches if entry.deadline <= now]:
            entry.expired = True
            entry.task.cancel()
            self._watches.discard(entry)
        self._timer = loop.call_later(self._tick_s, self._check) if self._watches else None
