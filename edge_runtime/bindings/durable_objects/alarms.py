"""Durable Object alarms: ``alarm()`` runs on its object at the time ``setAlarm`` gave, at least once.

The object's storage keeps the alarm (``alarm_at()``) and tells the scheduler of every change; the
directory's index keeps a copy so alarms set before a restart are found at start. As on Cloudflare, the
alarm is cleared as ``alarm()`` starts (an alarm set inside it stands), and an ``alarm()`` that raises is
retried with exponential backoff, up to ``alarm_max_retries`` times, with ``{retryCount, isRetry}``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any

from edgewise_sdk.workers._jsdict import JsDict

if TYPE_CHECKING:
    from .directory import ObjectDirectory, ObjectTarget

log = logging.getLogger("edgewise.durable_objects")


class AlarmScheduler:
    """One timer per object with a pending alarm."""

    def __init__(self, directory: ObjectDirectory) -> None:
        self._directory = directory
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._firing: set[tuple[str, str]] = set()
        self._retry_counts: dict[tuple[str, str], int] = {}
        self._runs: set[asyncio.Task[None]] = set()

    def changed(self, target: ObjectTarget) -> None:
        """The storage's alarm was set or deleted (by the object, or by a retry)."""
        alarm_at_s = self._directory.storage(target).alarm_at()
        self._directory.record_alarm(target, alarm_at_s)
        if target.key in self._firing:
            return  # alarm() is running: its end looks at the alarm again
        self._retry_counts.pop(target.key, None)
        self.schedule(target, alarm_at_s)

    def schedule(self, target: ObjectTarget, alarm_at_s: float | None) -> None:
        timer = self._timers.pop(target.key, None)
        if timer is not None:
            timer.cancel()
        if alarm_at_s is None:
            return
        loop = asyncio.get_running_loop()
        delay_s = max(0.0, alarm_at_s - time.time())
        self._timers[target.key] = loop.call_later(delay_s, self._start, target)

    def _start(self, target: ObjectTarget) -> None:
        self._timers.pop(target.key, None)
        task = asyncio.ensure_future(self._fire(target))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _fire(self, target: ObjectTarget) -> None:
        storage = self._directory.storage(target)
        alarm_at_s = storage.alarm_at()
        if alarm_at_s is None or target.key in self._firing:
            return
        if alarm_at_s > time.time() + 0.001:  # moved later since the timer was set
            self.schedule(target, alarm_at_s)
            return
        retry_count = self._retry_counts.pop(target.key, 0)
        self._firing.add(target.key)
        failed = False
        try:
            await storage.deleteAlarm()
            await self._directory.deliver(target, None, None, "alarm", lambda instance: _call_alarm(instance, retry_count))
        except Exception as error:  # any failure of alarm() (or of building its object) is retried
            failed = True
            log.warning("alarm() of Durable Object %s (%s) failed (attempt %d): %s", target.object_id,
                        target.object_class.class_name, retry_count + 1, error)
        finally:
            self._firing.discard(target.key)
        await self._after(target, storage, failed, retry_count)

    async def _after(self, target: ObjectTarget, storage: Any, failed: bool, retry_count: int) -> None:
        settings = self._directory.settings
        if storage.alarm_at() is None and failed:
            if retry_count >= settings.alarm_max_retries:
                log.error("alarm() of Durable Object %s (%s) failed %d times; it is not retried again",
                          target.object_id, target.object_class.class_name, retry_count + 1)
                return
            retry_at_s = time.time() + settings.alarm_retry_base_s * 2**retry_count
            await storage.setAlarm(int(retry_at_s * 1000))  # kept in storage: a retry survives a restart
            self._retry_counts[target.key] = retry_count + 1  # after setAlarm, whose notice resets the count
        self.schedule(target, storage.alarm_at())

    async def aclose(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._runs):
            task.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)


async def _call_alarm(instance: Any, retry_count: int) -> None:
    alarm = getattr(instance, "alarm", None)
    if alarm is None:
        raise TypeError(f"Durable Object class {type(instance).__name__} set an alarm but has no alarm() method")
    info = JsDict({"retryCount": retry_count, "isRetry": retry_count > 0})
    result = alarm(info) if _takes_an_argument(alarm) else alarm()
    if inspect.isawaitable(result):
        await result


def _takes_an_argument(method: Any) -> bool:
    parameters = inspect.signature(method).parameters.values()
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters)
