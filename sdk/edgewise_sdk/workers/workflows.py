"""``workers.workflows``: the Python step API of Workflows (``@step.do``, ``step.sleep`` ...) and
``NonRetryableError``.

``WorkflowStep`` is what ``run(self, event, step)`` receives. It turns decorated step functions
into durable steps of the engine underneath (any object with async ``do(name, callback, config)``,
``sleep``, ``sleep_until`` and ``wait_for_event``): it resolves a step's dependencies, runs them
concurrently when asked, and hands the engine a callback that takes the step context.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

StepFunction = Callable[..., Any]
CTX_PARAMETER = "ctx"  # a step parameter with this name receives the step context


class NonRetryableError(Exception):
    """Raise it in a step to fail the step at once, with no retries (``workers.workflows.NonRetryableError``)."""

    def __init__(self, message: str = "", name: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.name = name or "NonRetryableError"


class DurableSteps(Protocol):
    """What the Workflows engine offers one run of an instance (Cloudflare's JS ``WorkflowStep``)."""

    async def do(self, name: str, callback: Callable[[Any], Awaitable[Any]], config: Mapping[str, Any] | None) -> Any: ...
    async def sleep(self, name: str, duration: Any) -> None: ...
    async def sleep_until(self, name: str, timestamp: Any) -> None: ...
    async def wait_for_event(self, name: str, event_type: str, timeout: Any) -> Any: ...


class Step:
    """A decorated step function: awaiting ``step()`` runs it durably once its dependencies are done."""

    def __init__(self, owner: WorkflowStep, name: str, func: StepFunction, depends: Sequence[Step] | None,
                 concurrent: bool, config: Mapping[str, Any] | None) -> None:
        self.owner, self.name, self.func = owner, name, func
        self.depends, self.concurrent, self.config = depends, concurrent, config
        self.__name__ = getattr(func, "__name__", name)
        self.__doc__ = getattr(func, "__doc__", None)

    @property
    def _step_name(self) -> str:  # the attribute Cloudflare's SDK marks step functions with
        return self.name

    def __call__(self) -> Awaitable[Any]:
        return self.owner._run(self)

    def __repr__(self) -> str:
        return f"<workflow step {self.name!r}>"


class RollbackStep(Step):
    """A step made with ``step.with_rollback``: once it succeeds, ``step.rollback_all`` can undo it."""

    undo_func: StepFunction | None = None
    undo_config: Mapping[str, Any] | None = None

    def undo(self, func: StepFunction | None = None, *, config: Mapping[str, Any] | None = None) -> Any:
        """``@my_step.undo`` or ``@my_step.undo(config=...)``: ``undo(error, result)`` compensates the step."""
        def register(undo_func: StepFunction) -> StepFunction:
            self.undo_func, self.undo_config = undo_func, config
            return undo_func
        return register if func is None else register(func)

    async def __call__(self) -> Any:  # type: ignore[override]
        result = await self.owner._run(self)
        self.owner._done_with_rollback.append((self, result))
        return result


class WorkflowStep:
    """The ``step`` a Workflow's ``run`` receives.

    ``implicit_dependencies`` (the ``python_workflows_implicit_dependencies`` compatibility flag):
    ``@step.do(name=None, *, concurrent=False, config=None)``, with a step's dependencies named by
    its parameters; otherwise the legacy ``@step.do(name, depends=[...], concurrent=False, config=None)``.
    """

    def __init__(self, durable: DurableSteps, *, implicit_dependencies: bool) -> None:
        self._durable = durable
        self.implicit_dependencies = implicit_dependencies
        self._steps: dict[str, Step] = {}  # by step name and by function name: what parameters can name
        self._results: dict[Step, Any] = {}  # dependencies already resolved in this run
        self._in_flight: dict[Step, asyncio.Future[Any]] = {}
        self._done_with_rollback: list[tuple[RollbackStep, Any]] = []  # in the order they succeeded

    def do(self, name: Any = None, depends: Sequence[Any] | None = None, concurrent: bool = False,
           config: Mapping[str, Any] | None = None) -> Any:
        """The step decorator (``@step.do()``, ``@step.do("name", ...)``; also bare ``@step.do``)."""
        if callable(name) and not isinstance(name, str) and depends is None:
            return self._decorator(None, None, concurrent, config)(name)  # bare @step.do
        if self.implicit_dependencies and depends is not None:
            raise TypeError("step.do(depends=[...]) is the legacy form; with python_workflows_implicit_dependencies "
                            "a step names its dependencies as parameters (def final(first_step, ctx): ...)")
        if not self.implicit_dependencies and name is None:
            raise TypeError("step.do needs the step's name (step.do(\"my step\")); naming steps after their "
                            "function needs the python_workflows_implicit_dependencies compatibility flag")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"a step's name must be a str, got {type(name).__name__}")
        return self._decorator(name, depends, concurrent, config)

    def with_rollback(self, name: str | None = None, config: Mapping[str, Any] | None = None) -> Any:
        """A step with a compensating action: ``@step.with_rollback("charge")``, then ``@charge.undo``."""
        if callable(name) and not isinstance(name, str):
            return self._decorator(None, None, False, config, RollbackStep)(name)
        return self._decorator(name, None, False, config, RollbackStep)

    async def rollback_all(self, error: Any = None, *, continue_on_error: bool = False) -> None:
        """Runs the undo of every ``with_rollback`` step that succeeded, last first, each as a durable step.

        The first undo that fails stops it (its error raised), or with ``continue_on_error`` the rest
        still run and the failures are raised together in an ExceptionGroup."""
        failures: list[Exception] = []
        while self._done_with_rollback:
            done, result = self._done_with_rollback.pop()
            if done.undo_func is None:
                continue
            try:
                await self._durable.do(f"{done.name} (undo)", _undo_callback(done.undo_func, error, result),
                                       done.undo_config if done.undo_config is not None else done.config)
            except Exception as failure:
                if not continue_on_error:
                    raise
                failures.append(failure)
        if failures:
            raise ExceptionGroup(f"{len(failures)} undo step(s) of rollback_all failed", failures)

    def _decorator(self, name: str | None, depends: Sequence[Any] | None, concurrent: bool,
                   config: Mapping[str, Any] | None, kind: type[Step] = Step) -> Callable[[StepFunction], Step]:
        def decorate(func: StepFunction) -> Step:
            step = kind(self, func.__name__ if name is None else name, func,
                        None if depends is None else [_as_step(item) for item in depends], concurrent, config)
            self._steps[step.name] = self._steps[func.__name__] = step
            return step
        return decorate

    async def sleep(self, name: str, duration: Any) -> None:
        """Sleep durably for ``duration`` (milliseconds, or a string such as "10 seconds")."""
        await self._durable.sleep(name, duration)

    async def sleep_until(self, name: str, timestamp: Any) -> None:
        """Sleep durably until ``timestamp`` (a datetime, an ISO 8601 string or seconds since the epoch)."""
        await self._durable.sleep_until(name, timestamp)

    async def wait_for_event(self, name: str, event_type: str, /, timeout: Any = "24 hours") -> Any:
        """Wait durably for ``instance.send_event({"type": event_type, ...})``; returns {type, payload, timestamp}."""
        return await self._durable.wait_for_event(name, event_type, timeout)

    async def _run(self, step: Step) -> Any:
        wanted = self._dependencies(step)
        if step.concurrent:
            values = await asyncio.gather(*(self._resolve(item) for item in wanted))
        else:
            values = [await self._resolve(item) for item in wanted]
        return await self._do(step, values)

    def _dependencies(self, step: Step) -> list[Step | None]:
        """What each parameter of the step function receives: an earlier step's result, or (None) the context."""
        parameters = list(inspect.signature(step.func).parameters.values())
        if self.implicit_dependencies:
            return [self._named_step(step, p.name) for p in parameters]
        others = [p for p in parameters if p.name != CTX_PARAMETER]
        depends = step.depends or []
        if len(depends) != len(others):
            raise TypeError(f"step {step.name!r} has {len(others)} parameter(s) besides ctx but depends lists "
                            f"{len(depends)} step(s); give one step in depends=[...] per parameter, in order")
        queue = iter(depends)
        return [None if p.name == CTX_PARAMETER else next(queue) for p in parameters]

    def _named_step(self, step: Step, parameter: str) -> Step | None:
        if parameter == CTX_PARAMETER:
            return None
        found = self._steps.get(parameter)
        if found is None or found is step:
            known = ", ".join(sorted(name for name in self._steps if name.isidentifier() and name != step.name))
            raise TypeError(f"step {step.name!r} has a parameter {parameter!r} that names no earlier step "
                            f"(steps declared so far: {known or 'none'}); name a parameter after a @step.do "
                            f"function to receive its result, or {CTX_PARAMETER!r} for the step context")
        return found

    async def _resolve(self, dependency: Step | None) -> Any:
        if dependency is None:
            return _CONTEXT
        if dependency in self._results:
            return self._results[dependency]
        if dependency in self._in_flight:
            return await asyncio.shield(self._in_flight[dependency])
        return await dependency()

    async def _do(self, step: Step, values: list[Any]) -> Any:
        async def callback(context: Any) -> Any:
            result = step.func(*(context if value is _CONTEXT else value for value in values))
            return await result if inspect.isawaitable(result) else result

        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._in_flight[step] = future
        try:
            result = await self._durable.do(step.name, callback, step.config)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            elif not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: a failure nobody depends on is not "never retrieved"
            raise
        finally:
            self._in_flight.pop(step, None)
        self._results[step] = result
        future.set_result(result)
        return result


_CONTEXT = object()  # marks the ctx parameter among a step's resolved arguments


def _undo_callback(undo: StepFunction, error: Any, result: Any) -> Callable[[Any], Awaitable[Any]]:
    async def callback(context: Any) -> Any:
        done = undo(error, result)
        return await done if inspect.isawaitable(done) else done
    return callback


def _as_step(item: Any) -> Step:
    if not isinstance(item, Step):
        raise TypeError(f"depends=[...] takes functions decorated with @step.do, got {item!r}")
    return item
