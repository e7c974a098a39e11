"""``Context``: the execution context a handler gets as ``self.ctx`` (``waitUntil``, ``passThroughOnException``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

from ._jsdict import JsDict

log = logging.getLogger("edgewise.worker")

_CANCEL_GRACE_S = 1.0


class Context:
    """Work registered with ``waitUntil`` starts at once and may outlive the response, up to a bound."""

    __slots__ = ("_props", "pass_through_on_exception", "_tasks")

    def __init__(self, props: dict[str, Any] | None = None) -> None:
        self._props = props
        self.pass_through_on_exception = False
        self._tasks: list[asyncio.Future[Any]] = []

    @property
    def props(self) -> JsDict:
        if not isinstance(self._props, JsDict):
            self._props = JsDict(self._props or {})
        return self._props

    def waitUntil(self, awaitable: Awaitable[Any]) -> None:  # noqa: N802 - JS name
        if not inspect.isawaitable(awaitable):
            raise TypeError(f"waitUntil() needs a coroutine, Task or Future, got {type(awaitable).__name__}")
        self._tasks.append(asyncio.ensure_future(awaitable))

    wait_until = waitUntil

    def passThroughOnException(self) -> None:  # noqa: N802 - JS name
        self.pass_through_on_exception = True

    async def drain(self, timeout_s: float, label: str = "") -> None:
        """Wait for the waitUntil work (the runtime calls this after the response is sent); log failures."""
        while self._tasks:
            tasks, self._tasks = self._tasks, []
            done, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
                log.warning("waitUntil task cancelled after %.1f s %s", timeout_s, label)
            if pending:
                # Let the cancellations land, so no waitUntil work is still running once drain() returns.
                await asyncio.wait(pending, timeout=_CANCEL_GRACE_S)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    error = task.exception()
                    log.error("waitUntil task failed %s", label, exc_info=(type(error), error, error.__traceback__))
