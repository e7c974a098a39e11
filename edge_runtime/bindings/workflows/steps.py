"""One run of a Workflow instance's ``run()``: the durable steps it makes (Cloudflare's JS ``WorkflowStep``).

A run replays: every step already done returns its persisted result (or raises its persisted error)
without running again. A step is known by its name and the count of that name so far in the run
(Cloudflare's counter suffix), so replays find it again. When the run reaches a sleep, a retry
delay or an event that is not due yet, it stops there (``Hibernate``): the engine wakes it later
and it replays up to that point. A pause asked for while it runs stops it at the next step
(``Suspend``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from edgewise_sdk.workers import JsDict
from edgewise_sdk.workers.workflows import NonRetryableError

from .config import (
    NotPersistableError,
    StepPolicy,
    decode,
    duration_s,
    encode,
    epoch_s,
    error_record,
    rebuild_error,
)
from .store import StepRow, WorkflowStore

StoreCall = Callable[..., Awaitable[Any]]  # runs a blocking store method off the event loop


class Hibernate(BaseException):
    """The run reached something not due yet: it ends here and is woken at ``wake_at`` (or by an event).

    A BaseException, so the Workflow's ``except Exception`` does not swallow it."""


class Suspend(BaseException):
    """The instance was paused: the run ends at this step; ``resume()`` replays it."""


@dataclass
class RunControl:
    """What the engine asks of a run in flight (read at each step)."""

    pause_requested: bool = False
    poked: bool = False  # an event was sent while it ran: a hibernating run replays at once


class StepRunner:
    """The durable step API one run of one instance uses; ``stop`` says how the run ended early."""

    def __init__(self, store: WorkflowStore, call: StoreCall, workflow: str, instance_id: str,
                 control: RunControl, time_scale: float = 1.0) -> None:
        self.store, self._call = store, call
        self.workflow, self.instance_id = workflow, instance_id
        self.control, self.time_scale = control, time_scale
        self.stop: type[BaseException] | None = None  # Hibernate or Suspend, once the run must end
        self.wake_at: float | None = None  # the earliest time a hibernating run is due again
        self._counts: dict[str, int] = {}
        self._active = 0
        self._settled = asyncio.Event()
        self._settled.set()

    async def do(self, name: str, callback: Callable[[Any], Awaitable[Any]],
                 config: Mapping[str, Any] | None = None) -> Any:
        what = f"step {name!r}"
        policy = StepPolicy.from_config(config, what)
        row = await self._known(name, "step")
        if row is not None and row.status == "complete":
            return decode(row.result or "null")
        if row is not None and row.status == "errored":
            raise rebuild_error(json.loads(row.error or "{}"))
        self._check_stop()
        row = row or self._new_row(name, "step", "running")
        if row.wake_at is not None and row.wake_at > time.time():
            self._hibernate(row.wake_at)  # a retry is due later
        self._active += 1
        self._settled.clear()
        try:
            return await self._attempts(row, policy, callback)
        finally:
            self._active -= 1
            if self._active == 0:
                self._settled.set()

    async def _attempts(self, row: StepRow, policy: StepPolicy, callback: Callable[[Any], Awaitable[Any]]) -> Any:
        while True:
            row = replace(row, status="running", attempt=row.attempt + 1, wake_at=None)
            await self._save(row)
            context = JsDict(step=JsDict(name=row.name, count=row.count), attempt=row.attempt,
                             config=JsDict(policy.as_context()))
            deadline = asyncio.timeout(policy.timeout_s)
            try:
                async with deadline:
                    result = await callback(context)
                text = encode(result, f"the result of step {row.name!r}")
            except Exception as error:  # noqa: BLE001 - whatever a step raises is its failure
                failure = error
                if deadline.expired():  # not a TimeoutError the step raised itself
                    failure = TimeoutError(f"step {row.name!r} attempt {row.attempt} timed out after "
                                           f"{policy.timeout_s:g} s (config timeout)")
                row = await self._failed(row, policy, failure)
                if row.wake_at is not None and row.wake_at > time.time():
                    self._hibernate(row.wake_at)
                continue
            await self._save(replace(row, status="complete", result=text, error=None, ended_at=time.time()))
            return decode(text)

    async def _failed(self, row: StepRow, policy: StepPolicy, error: Exception) -> StepRow:
        """Records a failed attempt; raises the step's error when no retry is left."""
        record = error_record(error)
        final = isinstance(error, (NonRetryableError, NotPersistableError)) or row.attempt > policy.limit
        if final:
            await self._save(replace(row, status="errored", error=json.dumps(record), ended_at=time.time()))
            raise rebuild_error(record) from error
        wake_at = time.time() + policy.retry_delay_s(row.attempt) * self.time_scale
        row = replace(row, error=json.dumps(record), wake_at=wake_at)
        await self._save(row)
        return row

    async def sleep(self, name: str, duration: Any) -> None:
        seconds = duration_s(duration, f"step.sleep {name!r}") * self.time_scale
        await self._sleep(name, lambda now: now + seconds)

    async def sleep_until(self, name: str, timestamp: Any) -> None:
        wake_at = epoch_s(timestamp, f"step.sleep_until {name!r}")
        await self._sleep(name, lambda now: wake_at)

    async def _sleep(self, name: str, deadline: Callable[[float], float]) -> None:
        row = await self._known(name, "sleep")
        if row is not None and row.status == "complete":
            return
        self._check_stop()
        if row is None:
            row = self._new_row(name, "sleep", "waiting")
            row = replace(row, wake_at=deadline(row.started_at))  # fixed once: a restart keeps the deadline
            await self._save(row)
        if row.wake_at is not None and row.wake_at > time.time():
            self._hibernate(row.wake_at)
        await self._save(replace(row, status="complete", wake_at=None, ended_at=time.time()))

    async def wait_for_event(self, name: str, event_type: str, timeout: Any = "24 hours") -> Any:
        if not isinstance(event_type, str) or not event_type:
            raise TypeError(f"step.wait_for_event {name!r}: the event type must be a non-empty str, got {event_type!r}")
        seconds = duration_s(timeout, f"step.wait_for_event {name!r}: timeout") * self.time_scale
        row = await self._known(name, "waitForEvent")
        if row is not None and row.status == "complete":
            return decode(row.result or "null")
        if row is not None and row.status == "errored":
            raise rebuild_error(json.loads(row.error or "{}"))
        self._check_stop()
        if row is None:
            row = self._new_row(name, "waitForEvent", "waiting")
            row = replace(row, wake_at=row.started_at + seconds)
            await self._save(row)
        done = await self._call(self.store.receive_event, self.workflow, self.instance_id, event_type, row,
                                _event_result(event_type))
        if done is not None:
            return decode(done.result or "null")
        if row.wake_at is not None and row.wake_at > time.time():
            self._hibernate(row.wake_at)
        record = {"name": "TimeoutError", "message": f"step.wait_for_event {name!r} received no {event_type!r} "
                                                     f"event within {timeout}"}
        await self._save(replace(row, status="errored", error=json.dumps(record), wake_at=None, ended_at=time.time()))
        raise rebuild_error(record)

    async def settle(self) -> None:
        """Waits for steps still running in this run (siblings of one that stopped it) to end."""
        await self._settled.wait()

    def _check_stop(self) -> None:
        if self.stop is None and self.control.pause_requested:
            self.stop = Suspend
        if self.stop is not None:
            raise self.stop()

    def _hibernate(self, wake_at: float) -> None:
        self.wake_at = wake_at if self.wake_at is None else min(self.wake_at, wake_at)
        if self.stop is None:
            self.stop = Hibernate
        raise self.stop()

    async def _known(self, name: str, step_type: str) -> StepRow | None:
        """The persisted record of this use of `name` (the next count of it in this run)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a step's name must be a non-empty str, got {name!r}")
        count = self._counts[name] = self._counts.get(name, 0) + 1
        row = await self._call(self.store.step, self.workflow, self.instance_id, name, count)
        if row is not None and row.type != step_type:
            raise RuntimeError(f"{step_type} {name!r} (use {count} of that name) was a {row.type} when this "
                               "instance ran before: a Workflow must make the same steps in the same order on "
                               "every run (no branching on time or randomness outside steps)")
        return row

    def _new_row(self, name: str, step_type: str, status: str) -> StepRow:
        return StepRow(name, self._counts[name], step_type, status, 0, None, None, None, time.time(), None)

    async def _save(self, row: StepRow) -> None:
        await self._call(self.store.save_step, self.workflow, self.instance_id, row)


def _event_result(event_type: str) -> Callable[[str, float], str]:
    def result_of(payload: str, sent_at: float) -> str:
        timestamp = datetime.fromtimestamp(sent_at, UTC).replace(tzinfo=None)  # naive UTC, as on Cloudflare
        return encode({"type": event_type, "payload": json.loads(payload), "timestamp": timestamp}, "the event")
    return result_of
