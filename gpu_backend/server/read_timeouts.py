"""Read timeouts for a uvicorn server: a client must send its request's headers, and its body, in time.

uvicorn times out only an idle keep-alive connection. A client that sends its headers a byte a
second (slowloris), or its body that way, holds a connection and a task for as long as it likes.
Two pieces close that hole; ``uvicorn_config`` puts both on a server:

- ``with_header_deadline(base)``: uvicorn's HTTP protocol (h11 or httptools) with a timer armed
  when a connection opens and at the first byte of each further request. If the request's headers
  are not complete when it fires, the connection is closed: with a 408 when part of a request
  came, silently when nothing did.
- ``BodyDeadline``: ASGI middleware that gives the client ``timeout_s`` of the app's waiting, in
  all, to deliver a request's body (time the app spends between reads does not count). Past that
  the client gets a 408 and the connection closes, and the app is told the client has gone
  (``http.disconnect``), as if it had left. Once the body is in, nothing is timed: a stream that
  runs for minutes is unaffected.

Imports only uvicorn and the standard library: the dev edge uses it without loading the backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADER_TIMEOUT_S = 10.0  # the request line and headers, from the connection or the request's first byte
BODY_TIMEOUT_S = 60.0  # the whole body, counting only the time the app waits for it
_DISCONNECT = {"type": "http.disconnect"}
_CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class ReadTimeouts:
    header_s: float = HEADER_TIMEOUT_S
    body_s: float = BODY_TIMEOUT_S

    def __post_init__(self) -> None:
        if not (self.header_s > 0 and self.body_s > 0):
            raise ValueError(f"read timeouts must be positive seconds, got header {self.header_s}, body {self.body_s}")


def uvicorn_config(app: ASGIApp, timeouts: ReadTimeouts, answer: ASGIApp | None = None,
                   **options: Any) -> uvicorn.Config:
    """A uvicorn config serving ``app`` with both deadlines; ``answer`` sends the body's 408 (default: plain text)."""
    protocol = with_header_deadline(AutoHTTPProtocol, timeouts.header_s)
    return uvicorn.Config(BodyDeadline(app, timeouts.body_s, answer), http=protocol, **options)


def with_header_deadline(base: type[asyncio.Protocol], timeout_s: float) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's H11Protocol or HttpToolsProtocol) with the header deadline."""
    return type(f"{base.__name__}WithHeaderDeadline", (_HeaderDeadline, base), {"header_timeout_s": timeout_s})


class _HeaderDeadline:
    """Mixed into a uvicorn HTTP protocol, whose ``cycle`` is replaced by each request whose headers are complete."""

    header_timeout_s: float
    cycle: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _header_timer: asyncio.TimerHandle | None = None
    _header_cycle: Any = None  # the cycle when the timer was armed: another one means the headers came
    _header_bytes = False  # part of a request came while the timer ran

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._arm()  # the first byte of the next request on a kept-alive connection
        self._header_bytes = True
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not self._header_cycle:
            self._disarm()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._disarm()  # the WebSocket protocol takes the connection over
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._header_cycle, self._header_bytes = self.cycle, False
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is not self._header_cycle or self.transport.is_closing():
            return
        if self._header_bytes:
            message = f"Request timeout: the request headers did not arrive within {self.header_timeout_s:g} s\n"
            self.transport.write(_plain_408(message))
        self.transport.close()


def _plain_408(message: str) -> bytes:
    body = message.encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class BodyDeadline:
    """ASGI middleware: the client has ``timeout_s`` of the app's waiting, in all, to deliver each request's body."""

    def __init__(self, app: ASGIApp, timeout_s: float, answer: ASGIApp | None = None) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.answer = answer or _PlainTimeout(timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        read = _BodyRead(self, scope, receive, send)
        await self.app(scope, read.receive, read.send)


class _BodyRead:
    """One request's body, timed while the app waits for it."""

    def __init__(self, deadline: BodyDeadline, scope: Scope, receive: Receive, send: Send) -> None:
        self._deadline, self._scope, self._receive, self._send = deadline, scope, receive, send
        self._left_s = deadline.timeout_s
        self._complete = False  # the last chunk came: later reads only watch for a disconnect
        self._started = False  # the app began its answer
        self._timed_out = False  # the 408 went out (or the answer was cut): the app's messages go nowhere

    async def receive(self) -> Message:
        if self._timed_out:
            return dict(_DISCONNECT)
        if self._complete:
            return await self._receive()
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            async with asyncio.timeout(self._left_s):
                message = await self._receive()
        except TimeoutError:
            await self._give_up()
            return dict(_DISCONNECT)
        self._left_s -= loop.time() - began
        self._complete = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self._timed_out:
            return
        self._started = self._started or message["type"] == "http.response.start"
        await self._send(message)

    async def _give_up(self) -> None:
        self._timed_out = True
        if self._started:
            return  # too late for a 408: the app ends on the disconnect and uvicorn drops the connection
        await self._deadline.answer(self._scope, _disconnected, self._closing_send)

    async def _closing_send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
        await self._send(message)


async def _disconnected() -> Message:
    return dict(_DISCONNECT)


class _PlainTimeout:
    def __init__(self, timeout_s: float) -> None:
        self._body = f"Request timeout: the request body did not arrive within {timeout_s:g} s\n".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(self._body)).encode())]
        await send({"type": "http.response.start", "status": 408, "headers": headers})
        await send({"type": "http.response.body", "body": self._body})
