"""``ctx`` of a Durable Object (``DurableObjectState``) and the input gate that orders events to it.

Cloudflare delivers events to an object one at a time where it matters: while the object awaits its
own storage, no other event starts (storage calls here never yield to the loop, so there is nothing to
close), and ``blockConcurrencyWhile(fn)`` holds every new event back until ``fn`` finishes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from edgewise_sdk.workers import WebSocket, _state

if TYPE_CHECKING:
    from .directory import LiveObject, ObjectDirectory
    from .websockets import ObjectSockets

_background: set[asyncio.Future[Any]] = set()


class DurableObjectAbort(Exception):
    """``ctx.abort(reason)``: the call that aborted fails with it, and the object restarts on its next event."""


class BlockConcurrencyTimeout(TimeoutError):
    """``blockConcurrencyWhile`` ran past its bound; the object is reset, as on Cloudflare."""


class InputGate:
    """Closed while any ``blockConcurrencyWhile`` runs; events wait at ``passed()`` until it opens."""

    def __init__(self) -> None:
        self._holds = 0
        self._open = asyncio.Event()
        self._open.set()

    def close(self) -> None:
        self._holds += 1
        self._open.clear()

    def reopen(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._open.set()

    @property
    def is_open(self) -> bool:
        return self._holds == 0

    async def passed(self) -> None:
        while self._holds:
            await self._open.wait()


class DurableObjectState:
    """``self.ctx`` of a Durable Object: ``id``, ``storage``, ``blockConcurrencyWhile``, ``abort`` and the
    WebSocket hibernation API (``acceptWebSocket``, ``getWebSockets`` ...)."""

    def __init__(self, live: LiveObject, directory: ObjectDirectory, object_id: Any, storage: Any,
                 sockets: ObjectSockets) -> None:
        self._live, self._directory, self._sockets = live, directory, sockets
        self.id = object_id
        self.storage = storage

    def blockConcurrencyWhile(self, callback: Callable[[], Any]) -> asyncio.Future[Any]:  # noqa: N802
        """Runs ``callback`` now, holding every other event back until it finishes; awaitable for its result.

        Called in a constructor (which cannot await), the work still runs and still holds events back.
        """
        gate, bound_s = self._live.gate, self._directory.settings.block_concurrency_timeout_s
        gate.close()

        async def run() -> Any:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, bound_s)
                return result
            except TimeoutError:
                self._directory.discard(self._live)
                raise BlockConcurrencyTimeout(f"blockConcurrencyWhile() did not finish within {bound_s:g} s; "
                                              "the Durable Object was reset") from None
            except BaseException:
                self._directory.discard(self._live)  # Cloudflare resets an object whose callback throws
                raise
            finally:
                gate.reopen()

        task = asyncio.ensure_future(run())
        _background.add(task)
        task.add_done_callback(_settle_background)
        return task

    def abort(self, reason: str | None = None) -> None:
        self._directory.discard(self._live)
        raise DurableObjectAbort(f"Durable Object aborted: {reason}" if reason else "Durable Object aborted")

    def waitUntil(self, awaitable: Awaitable[Any]) -> None:  # noqa: N802 - Cloudflare's name
        ctx = _state.ctx()
        if ctx is not None:
            ctx.waitUntil(awaitable)
            return
        task = asyncio.ensure_future(awaitable)
        _background.add(task)
        task.add_done_callback(_settle_background)

    wait_until = waitUntil

    def acceptWebSocket(self, ws: WebSocket, tags: list[str] | None = None) -> None:  # noqa: N802
        self._sockets.accept(ws, tags)

    def getWebSockets(self, tag: str | None = None) -> list[WebSocket]:  # noqa: N802
        return self._sockets.open_sockets(tag)

    def getTags(self, ws: WebSocket) -> list[str]:  # noqa: N802
        return self._sockets.tags_of(ws)

    def setWebSocketAutoResponse(self, pair: Any = None) -> None:  # noqa: N802
        self._sockets.set_auto_response(pair)

    def getWebSocketAutoResponse(self) -> Any:  # noqa: N802
        return self._sockets.auto_response

    def getWebSocketAutoResponseTimestamp(self, ws: WebSocket) -> float | None:  # noqa: N802
        """When ``ws`` was last answered by the auto-response (milliseconds since the epoch), or None."""
        return self._sockets.auto_response_timestamp(ws)

    def setHibernatableWebSocketEventTimeout(self, timeout_ms: int | None = None) -> None:  # noqa: N802
        self._sockets.event_timeout_s = None if timeout_ms is None else timeout_ms / 1000.0

    def getHibernatableWebSocketEventTimeout(self) -> int | None:  # noqa: N802
        timeout_s = self._sockets.event_timeout_s
        return None if timeout_s is None else int(timeout_s * 1000)

    def __repr__(self) -> str:
        return f"<DurableObjectState {self.id}>"


def _settle_background(task: asyncio.Future[Any]) -> None:
    _background.discard(task)
    if not task.cancelled():
        task.exception()  # seen here; whoever awaits the task gets it as well


def now_ms() -> int:
    return time.time_ns() // 1_000_000
