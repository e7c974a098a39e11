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
    """Base class of Durable Objects (``__init__(self, ctx, env)``); only stored here, not yet run."""

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class WorkflowEntrypoint:
    """Base class of Workflows; only stored here, not yet run."""

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


def handler(func: F) -> F:
    """Marks a legacy top-level handler (``@handler async def on_fetch(request, env)``); it changes nothing."""
    func.__edgewise_handler__ = True  # type: ignore[attr-defined]
    return func
