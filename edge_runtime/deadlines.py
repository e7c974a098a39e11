"""Wall-time limits for invocations: one coarse periodic check for all of them, plus a watchdog.

A timer per request (``asyncio.timeout``) costs more than the rest of a small request's edge
work; a limit measured in seconds does not need millisecond precision. Cancelling only works at
an ``await``: Worker code that never awaits (``while True: pass``) holds the event loop, so a
watchdog thread notices the stalled loop and raises ``WallTimeExceeded`` inside that code, the
way Cloudflare stops a Worker past its CPU limit. Code blocked inside a C call (``time.sleep``)
is only stopped when the call returns.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

TICK_S = 0.05
_IDLE_CHECKS_BEFORE_EXIT = 50  # an idle watchdog thread ends after ~5 s
Receive = Callable[[], Awaitable[dict[str, Any]]]


class WallTimeExceeded(BaseException):
    """Raised inside Worker code that kept the event loop busy past its wall-time limit.

    A BaseException, so a Worker's ``except Exception`` does not swallow it.
    """


class Watch:
    """One invocation in flight; ``receive`` (ASGI) is listened on once it has run for a tick."""

    __slots__ = ("task", "deadline", "expired", "receive", "body", "listener", "disconnected")

    def __init__(self, task: asyncio.Task, deadline: float, receive: Receive | None, body: Any) -> None:
        # `deadline` is in loop.time(), which is time.monotonic() for asyncio's loop and uvloop's alike.
        self.task, self.deadline, self.expired = task, deadline, False
        self.receive, self.body, self.listener, self.disconnected = receive, body, None, False

    @property
    def can_listen(self) -> bool:
        # While the Worker still reads the request body, `receive` is its: a second reader would steal chunks.
        return self.receive is not None and self.listener is None and (self.body is None or self.body.complete)

    async def listen(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self.task.cancel()


class Deadlines:
    """``watch`` the current task; past its deadline it is cancelled and ``expired`` is set.

    With ``receive``, an invocation still running after a tick also has its client watched: if the
    client goes away the task is cancelled and ``disconnected`` is set, so what the Worker was
    waiting for (an AI generation, a subrequest) is abandoned at once. Quick requests, most of
    them, never pay for a listener.
    """

    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick_s = tick_s
        self._watches: set[Watch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._last_tick = 0.0  # loop.time() of the last check, read by the watchdog thread
        self._loop_thread: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: threading.Thread | None = None

    def watch(self, timeout_s: float, receive: Receive | None = None, body: Any = None) -> Watch:
        """``body`` (with a ``complete`` flag) is the request body the Worker may still be reading."""
        loop = asyncio.get_running_loop()
        entry = Watch(asyncio.current_task(), loop.time() + timeout_s, receive, body)
        if loop is not self._loop:  # a new loop (a restarted server): watches of the old one are moot
            self._watches.clear()
            self._timer = None
            self._loop, self._loop_thread = loop, threading.get_ident()
        self._watches.add(entry)
        if self._timer is None:
            self._last_tick = loop.time()
            self._timer = loop.call_later(self._tick_s, self._check)
        if self._watchdog is None:
            self._start_watchdog()
        return entry

    def unwatch(self, entry: Watch) -> None:
        self._watches.discard(entry)
        if entry.listener is not None:
            entry.listener.cancel()

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = self._last_tick = loop.time()
        for entry in list(self._watches):
            if entry.deadline <= now:
                entry.expired = True
                entry.task.cancel()
                self.unwatch(entry)
            elif entry.can_listen:
                entry.listener = loop.create_task(entry.listen())
        self._timer = loop.call_later(self._tick_s, self._check) if self._watches else None

    def _start_watchdog(self) -> None:
        self._loop_thread = threading.get_ident()
        self._watchdog = threading.Thread(target=self._guard, name="edgewise-watchdog", daemon=True)
        self._watchdog.start()

    def _guard(self) -> None:
        idle_checks = 0
        while True:
            time.sleep(self._tick_s * 2)
            if not self._watches:
                idle_checks += 1
                if idle_checks > _IDLE_CHECKS_BEFORE_EXIT:
                    self._watchdog = None  # the next watch() starts a fresh one...
                    if not self._watches:
                        return
                    self._watchdog = threading.current_thread()  # ...unless one came in meanwhile
                    idle_checks = 0
                continue
            idle_checks = 0
            loop = self._loop
            if loop is None or loop.is_closed() or not loop.is_running():
                self._watches.clear()  # that loop is gone: nothing of it can be stuck in a handler
                continue
            now = time.monotonic()
            if self._timer is None or now - self._last_tick < self._tick_s * 4:
                continue  # the loop is turning
            overdue = [entry for entry in list(self._watches) if entry.deadline <= now]
            if overdue:
                for entry in overdue:
                    entry.expired = True
                    self._watches.discard(entry)
                self._last_tick = now
                _raise_in_thread(self._loop_thread, WallTimeExceeded)


def _raise_in_thread(thread_id: int, error: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(error))
