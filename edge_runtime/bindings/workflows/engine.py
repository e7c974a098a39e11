"""The edge's Workflows engine: one per edge (``edge.shared("workflows", ...)``), running every
instance of every workflow declared by the edge's Workers, with their state in one SQLite store.

An instance runs as turns: each turn is an invocation of the defining Worker (at the PoP the instance
was created at) that calls ``run(event, step)`` and replays the steps already done from the store.
A turn ends when ``run`` returns or raises, or when it reaches a sleep, a retry delay or an event
that is not due yet (the instance is then ``waiting``: a timer or ``send_event`` starts the next
turn), or at the next step after ``pause()``. ``start()`` resumes every instance a previous run
left queued, running or waiting, so an instance survives a crash of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edgewise_sdk.workers import JsDict
from edgewise_sdk.workers.workflows import WorkflowStep

from ...config_error import ConfigError
from .config import decode, encode, error_record
from .definitions import (
    WorkflowDefinition,
    check_instance_id,
    declared_definitions,
    uses_implicit_dependencies,
)
from .steps import Hibernate, RunControl, StepRunner, Suspend
from .store import FINISHED, UNFINISHED, InstanceRow, WorkflowStore

if TYPE_CHECKING:
    from ...edge import Edge

log = logging.getLogger("edgewise.workflows")

SHARED_KEY = "workflows"
TIME_SCALE_ENV = "EDGEWISE_WORKFLOWS_TIME_SCALE"  # e.g. 0.01: sleeps, retry delays and event timeouts 100x shorter
TURN_TIMEOUT_S = 7 * 86400.0  # a turn's bound: steps have their own timeouts, and waits end the turn
CLOSE_TIMEOUT_S = 5.0
QUEUED_POLL_S = 1.0  # how often the store is checked for instances queued by another process (the CLI)


class WorkflowError(Exception):
    """A call on a workflow or an instance that cannot be done (unknown id, wrong state)."""


@dataclass
class _Run:
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    control: RunControl = field(default_factory=RunControl)


def workflow_engine(edge: Edge) -> WorkflowEngine:
    """The edge's engine, made on first use and started by ``edge.start()``."""
    return edge.shared(SHARED_KEY, lambda: WorkflowEngine(edge))


class WorkflowEngine:
    def __init__(self, edge: Edge, time_scale: float | None = None) -> None:
        self.edge = edge
        self.store = WorkflowStore(edge.state.folder("workflows"))
        self.time_scale = time_scale if time_scale is not None else float(os.environ.get(TIME_SCALE_ENV) or 1.0)
        self.started = False
        self._runs: dict[tuple[str, str], _Run] = {}
        self._watcher: asyncio.Task[None] | None = None

    @property
    def definitions(self) -> dict[str, WorkflowDefinition]:
        return declared_definitions([script.config for script in self.edge.scripts.values()])

    async def start(self) -> None:
        """Checks that every declared class exists, then resumes what an earlier run left unfinished."""
        definitions = self.definitions
        for definition in definitions.values():
            self._check_class(definition)
        self.started = True
        for row in await self._io(self.store.instances, None, UNFINISHED):
            if row.workflow not in definitions:
                log.warning("workflow %r of instance %r is not declared by any Worker of this edge: it stays %s",
                            row.workflow, row.id, row.status)
            elif row.status == "waitingForPause":
                await self._io(self.store.set_status, row.workflow, row.id, "paused")
            else:
                self._schedule((row.workflow, row.id))
        self._watcher = asyncio.create_task(self._watch_queued(), name="workflows: instances queued elsewhere")

    async def _watch_queued(self) -> None:
        """Runs instances that another process (``edgewise workflows trigger --local``) queued."""
        while True:
            await asyncio.sleep(QUEUED_POLL_S)
            try:
                rows = await self._io(self.store.instances, None, ("queued",))
            except Exception:
                log.debug("checking for queued workflow instances failed", exc_info=True)
                continue
            definitions = self.definitions
            for row in rows:
                run = self._runs.get((row.workflow, row.id))
                idle = run is None or (run.timer is None and (run.task is None or run.task.done()))
                if idle and row.workflow in definitions:
                    self._schedule((row.workflow, row.id))

    async def aclose(self) -> None:
        """Stops every turn in flight; their instances stay as they are, to resume at the next start."""
        if self._watcher is not None:
            self._watcher.cancel()
        tasks = [run.task for run in self._runs.values() if run.task is not None and not run.task.done()]
        for run in self._runs.values():
            if run.timer is not None:
                run.timer.cancel()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        self._runs.clear()
        self.store.close()

    def definition(self, workflow: str) -> WorkflowDefinition:
        try:
            return self.definitions[workflow]
        except KeyError:
            declared = ", ".join(self.definitions) or "none"
            raise WorkflowError(f"no Worker of this edge declares the workflow {workflow!r} (declared: {declared}); "
                                "add it to the [[workflows]] of the Worker that defines its class") from None

    # ---- what the binding calls ----------------------------------------------------------------------

    async def create(self, workflow: str, instance_id: str | None, params: Any, colo: str) -> str:
        definition = self.definition(workflow)
        instance_id = check_instance_id(instance_id)
        text = encode({} if params is None else params, f"the params of workflow instance {instance_id!r}")
        await self._io(self.store.create, workflow, instance_id, definition.class_name, definition.script_name,
                       text, colo)
        if self.started:
            self._schedule((workflow, instance_id))
        return instance_id

    async def store_has(self, workflow: str, instance_id: str) -> bool:
        return await self._io(self.store.instance, workflow, instance_id) is not None

    async def row(self, workflow: str, instance_id: str) -> InstanceRow:
        row = await self._io(self.store.instance, workflow, instance_id)
        if row is None:
            raise WorkflowError(f"workflow {workflow!r} has no instance with id {instance_id!r}")
        return row

    async def pause(self, workflow: str, instance_id: str) -> None:
        row, key = await self.row(workflow, instance_id), (workflow, instance_id)
        self._refuse_finished(row, "pause")
        run = self._runs.get(key)
        if run is not None and run.task is not None and not run.task.done():
            run.control.pause_requested = True  # the turn stops at its next step
            await self._io(self.store.set_status, workflow, instance_id, "waitingForPause", only_from=("running",))
            return
        self._forget_timer(key)
        await self._io(self.store.set_status, workflow, instance_id, "paused")

    async def resume(self, workflow: str, instance_id: str) -> None:
        row, key = await self.row(workflow, instance_id), (workflow, instance_id)
        run = self._runs.get(key)
        if row.status == "waitingForPause" and run is not None:
            run.control.pause_requested = False
            await self._io(self.store.set_status, workflow, instance_id, "running", only_from=("waitingForPause",))
            return
        if row.status != "paused":
            raise WorkflowError(f"cannot resume instance {instance_id!r} of workflow {workflow!r}: it is "
                                f"{row.status}, not paused")
        await self._io(self.store.set_status, workflow, instance_id, "queued", only_from=("paused",))
        self._schedule(key)

    async def terminate(self, workflow: str, instance_id: str) -> None:
        row = await self.row(workflow, instance_id)
        self._refuse_finished(row, "terminate")
        await self._io(self.store.set_status, workflow, instance_id, "terminated")
        await self._stop((workflow, instance_id))

    async def restart(self, workflow: str, instance_id: str) -> None:
        """Forgets every step and event of the instance and runs it again from the start."""
        await self.row(workflow, instance_id)
        key = (workflow, instance_id)
        await self._stop(key)
        await self._io(self.store.reset, workflow, instance_id)
        if self.started:
            self._schedule(key)

    async def send_event(self, workflow: str, instance_id: str, event_type: Any, payload: Any) -> None:
        row = await self.row(workflow, instance_id)
        if not isinstance(event_type, str) or not event_type:
            raise TypeError(f"send_event needs the event's type, a non-empty str, got {event_type!r}")
        if row.status in FINISHED:
            raise WorkflowError(f"cannot send an event to instance {instance_id!r} of workflow {workflow!r}: "
                                f"it is {row.status}")
        text = encode(payload, f"the payload of event {event_type!r}")
        await self._io(self.store.add_event, workflow, instance_id, event_type, text)
        key = (workflow, instance_id)
        run = self._runs.get(key)
        if run is not None and run.task is not None and not run.task.done():
            run.control.poked = True  # a turn in flight that hibernates replays at once to take it
        elif run is not None and run.timer is not None:
            self._schedule(key)

    # ---- turns ---------------------------------------------------------------------------------------

    def _schedule(self, key: tuple[str, str], delay_s: float = 0.0) -> None:
        run = self._runs.setdefault(key, _Run())
        if run.task is not None and not run.task.done() and run.task is not asyncio.current_task():
            run.control.poked = True
            return
        self._forget_timer(key)
        if delay_s > 0:
            run.timer = asyncio.get_running_loop().call_later(delay_s, self._start_turn, key)
        else:
            self._start_turn(key)

    def _start_turn(self, key: tuple[str, str]) -> None:
        run = self._runs.setdefault(key, _Run())
        run.timer, run.control = None, RunControl()
        run.task = asyncio.create_task(self._turn(key, run.control), name=f"workflow {key[0]} instance {key[1]}")

    async def _turn(self, key: tuple[str, str], control: RunControl) -> None:
        workflow, instance_id = key
        row = await self._io(self.store.instance, workflow, instance_id)
        if row is None or not await self._io(self.store.set_status, workflow, instance_id, "running",
                                             only_from=("queued", "running", "waiting")):
            return
        runner = StepRunner(self.store, self._io, workflow, instance_id, control, self.time_scale)
        try:
            output = await self._call_run(row, runner)
            result: tuple[str, str | None, str | None] = ("complete", encode(output, "the output of run()"), None)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # noqa: BLE001 - a Worker's error, a stop, or its wall-time limit
            result = ("errored", None, json.dumps(error_record(error)))
        if runner.stop is not None:
            await self._stopped(key, runner, control)
            return
        status, output_text, error_text = result
        if status == "errored":
            log.warning("workflow %r instance %r errored: %s", workflow, instance_id, json.loads(error_text or "{}"))
        await self._io(self.store.set_status, workflow, instance_id, status, output=output_text, error=error_text,
                       only_from=("running", "waitingForPause"))
        self._runs.pop(key, None)

    async def _stopped(self, key: tuple[str, str], runner: StepRunner, control: RunControl) -> None:
        """The turn ended early: paused, or waiting until ``runner.wake_at`` (or an event)."""
        if runner.stop is Suspend or control.pause_requested:
            await self._io(self.store.set_status, *key, "paused", only_from=("running", "waitingForPause"))
            if not control.pause_requested:  # resume() came while the turn was stopping
                with contextlib.suppress(WorkflowError):  # unless it was terminated meanwhile
                    await self.resume(*key)
            return
        assert runner.stop is Hibernate
        if not await self._io(self.store.set_status, *key, "waiting", only_from=("running",)):
            return
        # No await from here on: a send_event now sees this instance as waiting and wakes it itself.
        if control.poked:
            self._schedule(key)
        else:
            self._schedule(key, max(0.0, (runner.wake_at or time.time()) - time.time()))

    async def _call_run(self, row: InstanceRow, runner: StepRunner) -> Any:
        definition = WorkflowDefinition(row.workflow, row.class_name, row.script_name)
        script = self.edge.script(definition.script_name)
        colo = row.colo if row.colo in self.edge.colos else self.edge.colos[0]
        # naive UTC, as python_from_rpc gives a JS Date on Cloudflare (a Worker's local time is UTC there)
        event = JsDict(payload=decode(row.params), timestamp=datetime.fromtimestamp(row.created_at, UTC).replace(tzinfo=None),
                       instanceId=row.id, workflowName=row.workflow)
        step = WorkflowStep(runner, implicit_dependencies=uses_implicit_dependencies(script.config))

        async def call(worker: Any, env: Any, ctx: Any) -> Any:
            entrypoint = _new_entrypoint(script.find_class(colo, definition.class_name), ctx, env)
            try:
                result = entrypoint.run(event, step)
                result = await result if inspect.isawaitable(result) else result
            except BaseException as error:
                if runner.stop is not None:
                    await runner.settle()  # steps still running beside the one that stopped the turn
                    if isinstance(error, (Hibernate, Suspend)):
                        return None  # the turn ends as planned: no exception in its tail event
                if isinstance(error, TimeoutError):
                    raise _RunTimeout(error) from error  # else invoke() takes it for its own wall-time bound
                raise
            if runner.stop is not None:
                await runner.settle()
            return result

        try:
            return await self.edge.invoke(script, colo, call, event="workflow", timeout_s=TURN_TIMEOUT_S,
                                          detail={"entrypoint": row.class_name, "workflowName": row.workflow,
                                                  "instanceId": row.id})
        except _RunTimeout as wrapped:
            raise wrapped.error from None

    async def _stop(self, key: tuple[str, str]) -> None:
        """Ends the instance's turn in flight or its wait, if any."""
        self._forget_timer(key)
        run = self._runs.pop(key, None)
        if run is not None and run.task is not None and not run.task.done():
            run.task.cancel()
            await asyncio.wait([run.task], timeout=CLOSE_TIMEOUT_S)

    def _forget_timer(self, key: tuple[str, str]) -> None:
        run = self._runs.get(key)
        if run is not None and run.timer is not None:
            run.timer.cancel()
            run.timer = None

    def _check_class(self, definition: WorkflowDefinition) -> None:
        """A ConfigError (of the declaring Worker's config) unless the class exists and has ``run``."""
        try:
            script = self.edge.script(definition.script_name)
            found = script.find_class(self.edge.colos[0], definition.class_name)
        except LookupError as error:
            raise ConfigError(self._declared_in(definition), "workflows", f"workflow {definition.name!r}: {error}") \
                from None
        if not callable(getattr(found, "run", None)):
            raise ConfigError(script.config.file, "workflows", f"workflow {definition.name!r}: class "
                              f"{definition.class_name!r} of {script.config.main.name} ({script.config.main}) has "
                              "no run(self, event, step) method; subclass WorkflowEntrypoint")

    def _declared_in(self, definition: WorkflowDefinition) -> Any:
        for script in self.edge.scripts.values():
            if any(spec.kind == "workflows" and spec.settings.get("name") == definition.name
                   for spec in script.config.bindings):
                return script.config.file
        return None

    @staticmethod
    def _refuse_finished(row: InstanceRow, action: str) -> None:
        if row.status in FINISHED:
            raise WorkflowError(f"cannot {action} instance {row.id!r} of workflow {row.workflow!r}: it is {row.status}")

    @staticmethod
    async def _io(method: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(method, *args, **kwargs)


class _RunTimeout(Exception):
    """A TimeoutError raised by ``run()`` (a step that timed out), carried through ``invoke``."""

    def __init__(self, error: TimeoutError) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


def _new_entrypoint(cls: type, ctx: Any, env: Any) -> Any:
    entrypoint = cls(ctx, env)
    # Subclasses often skip super().__init__: the attributes are set either way, as for WorkerEntrypoint.
    entrypoint.ctx, entrypoint.env = ctx, env
    return entrypoint
