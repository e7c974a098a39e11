"""Handler base classes and the legacy ``@handler`` decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .context import Context

F = TypeVar("F", bound=Callable[..., Any])


class WorkerEntrypoint:
    """Subclass it as ``Default``; a new instance serves each invocation, with ``self.env`` and ``self.ctx``."""

    def __init__(self, ctx: Context, env: Any) -> None:
        # Cloudflare's order is (ctx, env); user subclasses often skip super().__init__, so the
        # runtime also sets both attributes after construction.
        self.ctx = ctx
        self.env = env


class DurableObject:
    """Base class of Durable Objects: ``__init__(self, ctx, env)``, one live instance per object id.

    ``self.ctx`` is the object's ``DurableObjectState`` (``id``, ``storage``, ``blockConcurrencyWhile``,
    ``abort``, ``acceptWebSocket`` ...), ``self.env`` the env of the PoP it lives at; the runtime sets both
    even when a subclass's ``__init__`` skips ``super().__init__``. Handlers: ``fetch(self, request)``,
    ``alarm(self[, alarmInfo])``, ``webSocketMessage(self, ws, message)``, ``webSocketClose(self, ws, code,
    reason, wasClean)``, ``webSocketError(self, ws, error)``; every other public method is callable over RPC
    from a stub (edge_runtime/bindings/durable_objects.py).
    """

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class WorkflowEntrypoint:
    """Base class of Workflows: subclass it and define ``run(self, event, step)`` (async or not).

    The edge's Workflows engine makes one per run of an instance, with ``self.env`` and ``self.ctx``,
    and calls ``run`` with ``event`` (a dict: payload, timestamp, instanceId, workflowName) and ``step``
    (``workers.workflows.WorkflowStep``). What ``run`` returns is the instance's output.
    """

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


def handler(func: F) -> F:
    """Marks a legacy top-level handler (``@handler async def on_fetch(request, env)``); it changes nothing."""
    func.__edgewise_handler__ = True  # type: ignore[attr-defined]
    return func
