"""One PoP's instance of a Worker: finds its handlers the way workerd does and calls them."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from edgewise_sdk.workers import Context, Request, WorkerEntrypoint

from .loader import WorkerLoadError

# How many of (request, env, ctx) each handler accepts, decided once at load time ("relaxed" calls).
_ALL = 3


@dataclass(frozen=True)
class ScheduledController:
    """What ``scheduled(self, controller, env, ctx)`` receives."""

    cron: str
    scheduledTime: int  # noqa: N815 - Cloudflare's name; milliseconds since the epoch
    type: str = "scheduled"

    def noRetry(self) -> None:  # noqa: N802 - Cloudflare's name
        pass


class Worker:
    """A loaded module and its entrypoint; ``fetch`` and ``scheduled`` invoke it like the runtime does."""

    def __init__(self, module: ModuleType, uses_global_handlers: bool,
                 local_module_names: frozenset[str] = frozenset()) -> None:
        self.module = module
        self.local_module_names = local_module_names  # the modules of its folder imported for it
        self.entrypoint = _default_class(module)
        self.on_fetch = _global_handler(module, "on_fetch", uses_global_handlers, self.entrypoint)
        self.on_scheduled = _global_handler(module, "on_scheduled", uses_global_handlers, self.entrypoint)
        self._fetch_arity = handler_arity(self.entrypoint, "fetch") if self.entrypoint else arity(self.on_fetch)
        fetch = getattr(self.entrypoint, "fetch", None) if self.entrypoint else self.on_fetch
        self._fetch_is_async = inspect.iscoroutinefunction(fetch)
        self._scheduled_arity = (
            handler_arity(self.entrypoint, "scheduled") if self.entrypoint else arity(self.on_scheduled)
        )

    def fetch(self, request: Request, env: Any, ctx: Context) -> Awaitable[Any]:
        """The handler's result to await (a plain function, so the handler's coroutine is awaited directly)."""
        if self._fetch_arity is None:
            raise TypeError("Handler does not export a fetch() function.")
        if self.entrypoint is not None:
            # Class entrypoints get env and ctx as None in the arguments; they read self.env / self.ctx.
            result = self._instance(env, ctx).fetch(*(request, None, None)[: self._fetch_arity])
        else:
            result = self.on_fetch(*(request, env, ctx)[: self._fetch_arity])
        return result if self._fetch_is_async else _settle(result)

    async def scheduled(self, controller: ScheduledController, env: Any, ctx: Context) -> None:
        if self._scheduled_arity is None:
            raise TypeError("Handler does not export a scheduled() function.")
        if self.entrypoint is not None:
            method = self._instance(env, ctx).scheduled
            await _settle(method(*(controller, None, None)[: self._scheduled_arity]))
            return
        await _settle(self.on_scheduled(*(controller, env, ctx)[: self._scheduled_arity]))

    def _instance(self, env: Any, ctx: Context) -> WorkerEntrypoint:
        # A new instance per invocation, as workerd makes; user __init__ may skip super().__init__.
        instance = self.entrypoint(ctx, env)
        instance.ctx, instance.env = ctx, env
        return instance


async def _settle(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


def _default_class(module: ModuleType) -> type | None:
    candidate = getattr(module, "Default", None)
    if isinstance(candidate, type) and issubclass(candidate, WorkerEntrypoint):
        return candidate
    return None


def _global_handler(module: ModuleType, name: str, allowed: bool, entrypoint: type | None) -> Callable | None:
    function = getattr(module, name, None)
    if not callable(function):
        return None
    if entrypoint is not None and name == "on_fetch":
        raise WorkerLoadError("TypeError: Cannot define multiple default entrypoints")
    if not allowed:
        raise WorkerLoadError(
            f"{module.__file__}: top-level {name}() is ignored from compatibility_date 2025-08-14 on. "
            "Define `class Default(WorkerEntrypoint)` with `async def fetch(self, request)`, or set an "
            "earlier compatibility_date, or add the 'disable_python_no_global_handlers' compatibility flag."
        )
    return function


def handler_arity(cls: type, name: str) -> int | None:
    """How many of (event, env, ctx) a class entrypoint's handler accepts; None when it has none."""
    method = getattr(cls, name, None)
    if method is None:
        return None
    count = arity(method)
    return None if count is None else max(count - 1, 0)  # drop self


def arity(function: Callable | None) -> int | None:
    """How many of (event, env, ctx) a handler function accepts (a relaxed call passes only those)."""
    if function is None:
        return None
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return _ALL + 1
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return min(len(positional), _ALL + 1)
