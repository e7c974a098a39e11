"""``WebSocketPair``: two linked WebSocket ends; the Worker keeps ``server``, returns ``client`` in a 101.

The runtime drives the ``client`` end for the real connection: it reads what the Worker sends with
``client.bridge()`` and feeds what the browser sends in with ``client.send()`` / ``client.close()``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("edgewise.worker")

CONNECTING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3
_EVENT_TYPES = ("open", "message", "close", "error")


@dataclass
class MessageEvent:
    data: str | bytes
    type: str = "message"


@dataclass
class CloseEvent:
    code: int
    reason: str
    wasClean: bool = True  # noqa: N815 - JS name
    type: str = "close"


@dataclass
class ErrorEvent:
    error: BaseException | None
    message: str = ""
    type: str = "error"


Event = MessageEvent | CloseEvent | ErrorEvent


class WebSocket:
    """One end of a pair. Events for it are held until ``accept()``, as on Workers."""

    def __init__(self) -> None:
        self._peer: WebSocket | None = None
        self._listeners: dict[str, list[Callable[[Any], Any]]] = {name: [] for name in _EVENT_TYPES}
        self._accepted = False
        self._held: list[Event] = []
        self._bridge: asyncio.Queue[Event] | None = None
        self._listener_tasks: set[asyncio.Future[Any]] = set()
        self.readyState = CONNECTING  # noqa: N815 - JS name
        self.binaryType = "arraybuffer"  # noqa: N815 - JS name
        self.onopen = self.onmessage = self.onclose = self.onerror = None

    def accept(self) -> None:
        self._accepted = True
        self._open()
        held, self._held = self._held, []
        for event in held:
            self._dispatch(event)

    def send(self, data: str | bytes | bytearray | memoryview) -> None:
        if self.readyState in (CLOSING, CLOSED):
            raise RuntimeError("Can't call WebSocket send() after close().")
        if not isinstance(data, str):
            data = bytes(data)
        self._peer._receive(MessageEvent(data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.readyState == CLOSED:
            return
        self.readyState = CLOSED
        self._peer._receive(CloseEvent(code, reason))

    def addEventListener(self, type: str, listener: Callable[[Any], Any]) -> None:  # noqa: N802 - JS name
        if type not in self._listeners:
            raise ValueError(f"Unknown WebSocket event {type!r}; use one of {_EVENT_TYPES}")
        self._listeners[type].append(listener)

    def removeEventListener(self, type: str, listener: Callable[[Any], Any]) -> None:  # noqa: N802 - JS name
        if listener in self._listeners.get(type, []):
            self._listeners[type].remove(listener)

    def bridge(self) -> asyncio.Queue[Event]:
        """Runtime side: events for this end go to the returned queue instead of listeners."""
        self._bridge = asyncio.Queue()
        self._open()
        held, self._held = self._held, []
        for event in held:
            self._bridge.put_nowait(event)
        return self._bridge

    def _open(self) -> None:
        if self.readyState == CONNECTING:  # a close held before accept() already made it CLOSED
            self.readyState = OPEN

    def _receive(self, event: Event) -> None:
        if isinstance(event, CloseEvent):
            self.readyState = CLOSED
        if self._bridge is not None:
            self._bridge.put_nowait(event)
        elif self._accepted:
            self._dispatch(event)
        else:
            self._held.append(event)

    def _dispatch(self, event: Event) -> None:
        handlers = list(self._listeners[event.type])
        attribute = getattr(self, "on" + event.type)
        if attribute is not None:
            handlers.append(attribute)
        for listener in handlers:
            self._call(listener, event)

    def _call(self, listener: Callable[[Any], Any], event: Event) -> None:
        try:
            result = listener(event)
        except Exception as error:
            self._report(error, event)
            return
        if inspect.isawaitable(result):
            # The event loop keeps only weak references to tasks: hold the listener's until it ends.
            task = asyncio.ensure_future(result)
            self._listener_tasks.add(task)
            task.add_done_callback(lambda done: self._task_done(done, event))

    def _task_done(self, task: asyncio.Future[Any], event: Event) -> None:
        self._listener_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._report(task.exception(), event)

    def _report(self, error: BaseException, event: Event) -> None:
        log.error("WebSocket %s listener failed", event.type, exc_info=(type(error), error, error.__traceback__))
        if event.type != "error":  # an error listener that fails must not loop
            self._dispatch(ErrorEvent(error, str(error)))


class WebSocketPair:
    """``client, server = WebSocketPair.new().object_values()`` (or unpack ``WebSocketPair.new()``)."""

    def __init__(self) -> None:
        self.client, self.server = WebSocket(), WebSocket()
        self.client._peer, self.server._peer = self.server, self.client

    @classmethod
    def new(cls) -> WebSocketPair:
        return cls()

    def object_values(self) -> tuple[WebSocket, WebSocket]:
        return self.client, self.server

    def __iter__(self) -> Iterator[WebSocket]:
        return iter((self.client, self.server))

    def __getitem__(self, index: int) -> WebSocket:
        return (self.client, self.server)[index]


class WebSocketRequestResponsePair:
    """``WebSocketRequestResponsePair.new("ping", "pong")``: the auto-response of ``setWebSocketAutoResponse``."""

    def __init__(self, request: str, response: str) -> None:
        if not isinstance(request, str) or not isinstance(response, str):
            raise TypeError("WebSocketRequestResponsePair needs two strings: the request and its response")
        self.request, self.response = request, response

    @classmethod
    def new(cls, request: str, response: str) -> WebSocketRequestResponsePair:
        return cls(request, response)

    def __repr__(self) -> str:
        return f"WebSocketRequestResponsePair({self.request!r}, {self.response!r})"
