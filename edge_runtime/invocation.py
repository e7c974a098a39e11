"""Running Worker code that is not an HTTP request (an RPC call, a Durable Object event, a queue
batch, a workflow) as an invocation at one PoP: the same env, limits, log capture and tail events a
request gets.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from edgewise_sdk.workers import Context, _state

from .blocking_io import run_releasing_loop
from .tail import TailHub, exception_entry

if TYPE_CHECKING:
    from .env import Env
    from .scripts import Script
    from .worker import Worker

log = logging.getLogger("edgewise.edge")
T = TypeVar("T")
Call = Callable[["Worker", "Env", Context], Any]


class InvocationTimeout(TimeoutError):
    """The invoked code ran past its wall-time bound."""


async def invoke(script: Script, colo: str, call: Call, hub: TailHub, *, event: str,
                 detail: dict[str, Any] | None = None, timeout_s: float | None = None) -> Any:
    """``call(worker, env, ctx)`` as an invocation of ``script`` at ``colo``; its result, or its error as it is.

    The wall-time bound is ``timeout_s`` (default: the Worker's ``[edgewise.limits] wall_time_s``);
    ``waitUntil`` work runs on after the call, up to ``wait_until_s``.
    """
    worker, env = script.instance(colo)
    limits = script.config.edgewise.limits
    ctx, logs = Context(), []
    budget = _state.SubrequestBudget(limits.max_subrequests)
    token = _state.current.set(_state.Invocation(env, ctx, budget, logs))
    started, failure = time.perf_counter(), None
    bound_s = limits.wall_time_s if timeout_s is None else timeout_s
    deadline = asyncio.timeout(bound_s)
    try:
        async with deadline:
            return await run_releasing_loop(_settled, call, worker, env, ctx)
    except TimeoutError as error:
        if not deadline.expired():  # the callee's own TimeoutError, not our bound
            failure = error
            raise
        failure = InvocationTimeout(f"the {event} invocation of Worker {script.name!r} at {colo} did not finish "
                                    f"within {bound_s:g} s")
        raise failure from None
    except BaseException as error:
        failure = error
        raise
    finally:
        _state.current.reset(token)
        _drain_later(ctx, limits.wait_until_s, f"({event} at {colo})")
        if hub.has_subscribers:
            hub.publish(_event(script.name, colo, event, detail or {}, logs, failure, started))


async def _settled(call: Call, worker: Worker, env: Env, ctx: Context) -> Any:
    result = call(worker, env, ctx)
    return await result if inspect.isawaitable(result) else result


_background: set[asyncio.Future[Any]] = set()


def _drain_later(ctx: Context, wait_s: float, label: str) -> None:
    if ctx._tasks:
        task = asyncio.ensure_future(ctx.drain(wait_s, label))
        _background.add(task)
        task.add_done_callback(_background.discard)


def _event(script: str, colo: str, event: str, detail: dict[str, Any], logs: list, failure: BaseException | None,
           started: float) -> dict[str, Any]:
    """Wrangler tail's event shape; ``event`` names the kind (``rpc``, ``queue``, ``alarm``, ...)."""
    outcome = "ok" if failure is None else ("canceled" if isinstance(failure, asyncio.CancelledError) else "exception")
    return {
        "outcome": outcome,
        "scriptName": script,
        "entrypoint": detail.get("entrypoint", "Default"),
        "exceptions": [] if failure is None else [exception_entry(failure)],
        "logs": logs,
        "eventTimestamp": int(time.time() * 1000),
        "event": {"type": event, **detail},
        "edgewise": {"colo": colo, "durationMs": round((time.perf_counter() - started) * 1000, 3)},
    }
