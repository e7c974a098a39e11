"""The ASGI websocket side of ``workers.asgi``: one app connection bridged to a ``WebSocketPair``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Scope

from .response import Response
from .websocket import CLOSED, CloseEvent, MessageEvent, WebSocketPair

log = logging.getLogger("edgewise.worker")


def header_pairs(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]


def settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


class WebSocketSession:
    """Bridges one ASGI websocket connection to the server end of a ``WebSocketPair``."""

    def __init__(self) -> None:
        self.client, self.server = WebSocketPair.new().object_values()
        self.handshake: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._inbox.put_nowait({"type": "websocket.connect"})
        self._app_closed = False
        self.server.addEventListener("message", self._on_message)
        self.server.addEventListener("close", self._on_close)
        self.server.accept()

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self._inbox.get, self.send)
        except Exception as error:
            if not self.handshake.done():
                self.handshake.set_exception(error)  # fails the upgrade request itself: a 500
                return
            log.exception("ASGI websocket application failed")
            self._close_server(1011)
        else:
            settle(self.handshake, Response(None, status=403))  # returned without accepting
            self._close_server(1000)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.send":
            self._forward(message)
        elif kind == "websocket.close":
            self._close(message)
        else:
            log.warning("ASGI websocket message %r is not supported; ignored", kind)

    def _accept(self, message: Message) -> None:
        headers = header_pairs(message.get("headers", []))
        if message.get("subprotocol"):
            headers.append(("sec-websocket-protocol", message["subprotocol"]))
        settle(self.handshake, Response(None, status=101, headers=headers, web_socket=self.client))

    def _forward(self, message: Message) -> None:
        if not self.handshake.done():
            raise RuntimeError("websocket.send before websocket.accept")
        if self.server.readyState == CLOSED:
            raise OSError("WebSocket is closed")  # Starlette turns OSError into WebSocketDisconnect
        data = message.get("bytes")
        self.server.send(data if data is not None else message.get("text", ""))

    def _close(self, message: Message) -> None:
        if not self.handshake.done():
            settle(self.handshake, Response(None, status=403))  # close before accept refuses the upgrade
            return
        code = message.get("code") or 1000
        self._close_server(code, message.get("reason") or "")
        self._inbox.put_nowait({"type": "websocket.disconnect", "code": code, "reason": message.get("reason") or ""})

    def _close_server(self, code: int, reason: str = "") -> None:
        if not self._app_closed and self.server.readyState != CLOSED:
            self.server.close(code, reason)
        self._app_closed = True

    def _on_message(self, event: MessageEvent) -> None:
        if isinstance(event.data, str):
            self._inbox.put_nowait({"type": "websocket.receive", "text": event.data, "bytes": None})
        else:
            self._inbox.put_nowait({"type": "websocket.receive", "bytes": bytes(event.data), "text": None})

    def _on_close(self, event: CloseEvent) -> None:
        self._inbox.put_nowait({"type": "websocket.disconnect", "code": event.code, "reason": event.reason})
