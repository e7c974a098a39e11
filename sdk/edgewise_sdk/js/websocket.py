"""``js.WebSocket``: the outbound WebSocket client (``WebSocket.new("wss://...")``), on the ``websockets`` library.

It is a subclass of the server-side ``workers.WebSocket`` (one end of a ``WebSocketPair``) because the Worker
sees the same object either way: ``addEventListener``, the ``on*`` attributes, ``readyState``, ``send`` and
``close``, with listeners that may be async. What differs is the other end: a real connection, opened as the
object is made (as in browsers, with no ``accept()``), read by one task that dispatches ``open``, ``message``,
``close`` and ``error`` events, and written by another, so sends keep their order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from edgewise_sdk import workers
from edgewise_sdk.workers.websocket import CLOSED, CLOSING, CONNECTING, OPEN, CloseEvent, ErrorEvent, MessageEvent

log = logging.getLogger("edgewise.worker")

OPEN_TIMEOUT_S = 10.0  # a handshake that takes longer fails with an error event, as a browser's would
CLOSE_TIMEOUT_S = 10.0
_ABNORMAL_CLOSURE, _NO_STATUS = 1006, 1005


@dataclass
class OpenEvent:
    type: str = "open"


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class WebSocket(workers.WebSocket):
    """``WebSocket.new(url, protocols=None)`` (or ``WebSocket(url)``): connects to a ws:// or wss:// URL."""

    CONNECTING, OPEN, CLOSING, CLOSED = CONNECTING, OPEN, CLOSING, CLOSED

    def __init__(self, url: Any, protocols: str | list[str] | None = None) -> None:
        super().__init__()
        self.url = _checked_url(url)
        self.protocol = ""
        self.extensions = ""
        self._accepted = True  # a client's events go to its listeners as they come
        self._outgoing: asyncio.Queue[str | bytes | _Close] = asyncio.Queue()
        subprotocols = [protocols] if isinstance(protocols, str) else list(protocols or [])
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("js.WebSocket(url) connects at once, so it must be made inside a handler "
                               "(with the event loop running)") from None
        self._task = loop.create_task(self._run(subprotocols))

    @classmethod
    def new(cls, url: Any, protocols: str | list[str] | None = None) -> WebSocket:
        return cls(url, protocols)

    def accept(self) -> None:
        """A client socket needs no accept(); calling it changes nothing (Workers allows it too)."""

    def send(self, data: str | bytes | bytearray | memoryview) -> None:
        if self.readyState == CONNECTING:
            raise RuntimeError("Failed to execute 'send' on 'WebSocket': still in CONNECTING state "
                               "(wait for the 'open' event)")
        if self.readyState in (CLOSING, CLOSED):
            raise RuntimeError("Can't call WebSocket send() after close().")
        self._outgoing.put_nowait(data if isinstance(data, str) else bytes(data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.readyState in (CLOSING, CLOSED):
            return
        self.readyState = CLOSING
        self._outgoing.put_nowait(_Close(int(code), str(reason)))

    async def _run(self, subprotocols: list[str]) -> None:
        try:
            connection = await connect(self.url, subprotocols=subprotocols or None, open_timeout=OPEN_TIMEOUT_S,
                                       close_timeout=CLOSE_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - whatever stops the handshake is the error event
            self.readyState = CLOSED
            self._dispatch(ErrorEvent(error, f"WebSocket connection to {self.url!r} failed: {error}"))
            self._dispatch(CloseEvent(_ABNORMAL_CLOSURE, "", wasClean=False))
            return
        self.protocol = connection.subprotocol or ""
        if self.readyState == CONNECTING:
            self.readyState = OPEN
            self._dispatch(OpenEvent())
        writer = asyncio.ensure_future(self._write(connection))
        try:
            async for message in connection:
                self._dispatch(MessageEvent(message))
        except ConnectionClosed:
            pass  # the close event below carries the code
        finally:
            writer.cancel()
        self.readyState = CLOSED
        code = connection.close_code or _NO_STATUS
        self._dispatch(CloseEvent(code, connection.close_reason or "", wasClean=code != _ABNORMAL_CLOSURE))

    async def _write(self, connection: ClientConnection) -> None:
        try:
            while True:
                item = await self._outgoing.get()
                if isinstance(item, _Close):
                    await connection.close(item.code, item.reason)
                    return
                await connection.send(item)
        except ConnectionClosed:
            return

    def __repr__(self) -> str:
        return f"WebSocket(url={self.url!r}, readyState={self.readyState})"


def _checked_url(url: Any) -> str:
    url = str(url)
    scheme, separator, rest = url.partition("://")
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())  # as browsers map them
    if not separator or scheme not in ("ws", "wss") or not rest:
        raise ValueError(f"js.WebSocket needs a ws:// or wss:// URL, not {url!r}")
    return f"{scheme}://{rest}"
