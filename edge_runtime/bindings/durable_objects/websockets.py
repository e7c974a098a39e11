"""The WebSocket hibernation API: sockets a Durable Object accepts with ``ctx.acceptWebSocket``.

The directory keeps them, not the instance, so the object can be dropped while idle (hibernation) and
built again when a message arrives. Each event on an accepted socket (message, close, error) is queued
per object and delivered in order, through the input gate, to ``webSocketMessage(ws, message)``,
``webSocketClose(ws, code, reason, wasClean)`` or ``webSocketError(ws, error)``. A message equal to the
auto-response request is answered here without waking the object.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import pickle
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from edgewise_sdk.workers import WebSocket
from edgewise_sdk.workers.websocket import OPEN, CloseEvent, ErrorEvent, MessageEvent, WebSocketRequestResponsePair

from ...rpc import from_rpc, to_rpc
from .state import now_ms

if TYPE_CHECKING:
    from .directory import ObjectDirectory, ObjectTarget

log = logging.getLogger("edgewise.durable_objects")

MAX_TAGS = 10  # Cloudflare's bounds on tags per socket and on one tag's length
MAX_TAG_CHARS = 256
MAX_ATTACHMENT_BYTES = 16 * 1024  # bound on a serialized attachment


class HibernatableWebSocket(WebSocket):
    """A socket after ``acceptWebSocket``: it also keeps an attachment, which survives hibernation."""

    _attachment: Any = None

    def serializeAttachment(self, value: Any) -> None:  # noqa: N802 - Cloudflare's name
        copied = to_rpc(value, "serializeAttachment()")
        size = len(pickle.dumps(copied))
        if size > MAX_ATTACHMENT_BYTES:
            raise ValueError(f"serializeAttachment(): the value takes {size} bytes serialized, over the "
                             f"{MAX_ATTACHMENT_BYTES} byte limit; keep larger state in ctx.storage")
        self._attachment = copied

    def deserializeAttachment(self) -> Any:  # noqa: N802 - Cloudflare's name
        return None if self._attachment is None else from_rpc(to_rpc(self._attachment))


class ObjectSockets:
    """One object's accepted sockets, their tags, and the queue of their events."""

    def __init__(self, directory: ObjectDirectory, target: ObjectTarget) -> None:
        self._directory, self._target = directory, target
        self._tags: dict[WebSocket, tuple[str, ...]] = {}
        self._auto_response_at: dict[WebSocket, int] = {}
        self.auto_response: WebSocketRequestResponsePair | None = None
        self.event_timeout_s: float | None = None
        self._events: asyncio.Queue[tuple[str, WebSocket, tuple[Any, ...]]] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None

    def accept(self, ws: WebSocket, tags: list[str] | None) -> None:
        if not isinstance(ws, WebSocket):
            raise TypeError(f"acceptWebSocket() needs the server end of a WebSocketPair, got {type(ws).__name__}")
        if ws in self._tags or ws._accepted:
            raise TypeError("acceptWebSocket(): this WebSocket was already accepted")
        self._tags[ws] = _checked_tags(tags)
        ws.__class__ = HibernatableWebSocket  # the same object the caller holds, now with attachments
        ws.addEventListener("message", lambda event: self._on_message(ws, event))
        ws.addEventListener("close", lambda event: self._enqueue("webSocketClose", ws, _close_args(event)))
        ws.addEventListener("error", lambda event: self._enqueue("webSocketError", ws, (_error_of(event),)))
        ws.accept()

    @property
    def has_open(self) -> bool:
        return any(ws.readyState == OPEN for ws in self._tags)

    def open_sockets(self, tag: str | None = None) -> list[WebSocket]:
        return [ws for ws, tags in self._tags.items() if ws.readyState == OPEN and (tag is None or tag in tags)]

    def tags_of(self, ws: WebSocket) -> list[str]:
        if ws not in self._tags:
            raise TypeError("getTags(): this WebSocket was not accepted by ctx.acceptWebSocket()")
        return list(self._tags[ws])

    def set_auto_response(self, pair: Any) -> None:
        if pair is None:
            self.auto_response = None
            return
        if isinstance(pair, Mapping):
            pair = WebSocketRequestResponsePair(pair.get("request"), pair.get("response"))
        if not isinstance(pair, WebSocketRequestResponsePair):
            raise TypeError("setWebSocketAutoResponse() needs a WebSocketRequestResponsePair(request, response)")
        self.auto_response = pair

    def auto_response_timestamp(self, ws: WebSocket) -> int | None:
        return self._auto_response_at.get(ws)

    def _on_message(self, ws: WebSocket, event: MessageEvent) -> None:
        pair = self.auto_response
        if pair is not None and event.data == pair.request:  # answered without waking the object
            ws.send(pair.response)
            self._auto_response_at[ws] = now_ms()
            return
        self._enqueue("webSocketMessage", ws, (event.data,))

    def _enqueue(self, handler: str, ws: WebSocket, args: tuple[Any, ...]) -> None:
        if handler == "webSocketClose":
            self._auto_response_at.pop(ws, None)
        self._events.put_nowait((handler, ws, args))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._deliver_all())

    async def _deliver_all(self) -> None:
        while not self._events.empty():
            handler, ws, args = self._events.get_nowait()
            if handler == "webSocketClose":
                self._tags.pop(ws, None)  # closed sockets leave getWebSockets() and the object's bookkeeping
            try:
                await self._directory.deliver(self._target, None, None, handler,
                                              partial(_call_handler, handler=handler, ws=ws, args=args),
                                              self.event_timeout_s)
            except Exception as error:  # the handler's failure is logged (and in the tail); the next event goes on
                log.error("%s() of Durable Object %s (%s) failed: %s", handler, self._target.object_id,
                          self._target.object_class.class_name, error)

    async def aclose(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)


async def _call_handler(instance: Any, *, handler: str, ws: WebSocket, args: tuple[Any, ...]) -> None:
    method = getattr(instance, handler, None)
    if method is None:
        if handler == "webSocketMessage":
            log.warning("Durable Object class %s accepted a WebSocket but has no webSocketMessage() method",
                        type(instance).__name__)
        return
    result = method(ws, *args)
    if inspect.isawaitable(result):
        await result


def _checked_tags(tags: Any) -> tuple[str, ...]:
    if tags is None:
        return ()
    tags = list(tags)
    if len(tags) > MAX_TAGS:
        raise ValueError(f"acceptWebSocket(): at most {MAX_TAGS} tags per WebSocket, got {len(tags)}")
    for tag in tags:
        if not isinstance(tag, str) or not 0 < len(tag) <= MAX_TAG_CHARS:
            raise ValueError(f"acceptWebSocket(): each tag must be a string of 1 to {MAX_TAG_CHARS} characters, "
                             f"got {tag!r}")
    return tuple(tags)


def _close_args(event: CloseEvent) -> tuple[int, str, bool]:
    return event.code, event.reason, event.wasClean


def _error_of(event: ErrorEvent) -> Any:
    return event.error if event.error is not None else RuntimeError(event.message)
