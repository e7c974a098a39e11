"""Blocking socket calls in a Worker's fetch handler wait on a thread, not on the event loop.

Every PoP's Worker shares one event loop, so ``requests.get`` (or urllib.request, httpx.Client,
http.client, urllib3) inside a handler would stall every other request; on Cloudflare each
request has its own thread of control. ``run_releasing_loop`` runs the handler's coroutine inside
a greenlet. The blocking methods of ``socket.socket`` and ``ssl.SSLSocket`` (and
``socket.getaddrinfo``) are wrapped process-wide: called inside such a greenlet on a socket in
blocking or timeout mode, the call runs on a worker thread, and the greenlet, with the handler's
whole synchronous call stack, is suspended until it is done while the loop serves other
requests. Everywhere else (non-blocking sockets, such as the loop's own, other threads, code
outside an invocation) the wrappers call the original at once.

Limits: only socket I/O is moved off the loop (not ``time.sleep``, CPU work or file I/O); a
response body streamed by the Worker after ``fetch`` returned, ``waitUntil`` tasks and scheduled
handlers run without this; a cancelled invocation (wall time, client gone) stops waiting at
once, but the socket call already on its thread runs on until it returns or times out.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import greenlet

# Blocking calls of concurrent invocations wait here; a call queued behind 64 others waits its turn.
_executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="edgewise-blocking-io")

_SOCKET_METHODS = ("connect", "connect_ex", "accept", "recv", "recv_into", "recvfrom", "recvfrom_into",
                   "send", "sendall", "sendto")
_SSL_METHODS = ("connect", "connect_ex", "do_handshake", "read", "write", "recv", "recv_into",
                "send", "sendall", "unwrap")


async def run_releasing_loop(function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``await function(*args)``, with blocking socket calls in it (or in the call itself) run off the loop."""
    return await _Releasing(_call(function, args))


async def _call(function: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> Any:
    return await function(*args)


class _Portal(greenlet.greenlet):
    """The greenlet a handler's coroutine is stepped in; its parent is whoever steps it now."""

    def __init__(self, coro: Any) -> None:
        super().__init__(self._drive)
        self._coro = coro

    def _drive(self, message: tuple[str, Any]) -> tuple[str, Any]:
        while True:
            how, value = message
            try:
                out = self._coro.send(value) if how == "send" else self._coro.throw(value)
            except StopIteration as stop:
                return "return", stop.value
            except BaseException as error:  # noqa: BLE001 - handed to the awaiting task as it is
                return "raise", error
            message = self.parent.switch(("yield", out))

    def wait(self, awaitable: Awaitable[Any]) -> Any:
        """Suspend the handler until ``awaitable`` (awaited on the loop) is done; its result or error."""
        how, value = self.parent.switch(("await", awaitable))
        if how == "throw":
            raise value
        return value


class _Releasing:
    """Awaitable: drives a coroutine in a ``_Portal``, passing up what it yields to the task."""

    def __init__(self, coro: Any) -> None:
        self._coro = coro

    def __await__(self) -> Generator[Any, Any, Any]:
        portal = _Portal(self._coro)
        portal.gr_context = greenlet.getcurrent().gr_context  # the task's context: contextvars as usual
        message: tuple[str, Any] = ("send", None)
        while True:
            portal.parent = greenlet.getcurrent()
            kind, item = portal.switch(message)
            if kind == "return":
                return item
            if kind == "raise":
                raise item
            try:
                if kind == "yield":  # the coroutine awaits a future: the task waits for it
                    message = ("send", (yield item))
                else:  # a blocking call waits for its thread
                    message = ("send", (yield from item.__await__()))
            except BaseException as error:  # noqa: BLE001 - cancellation included: thrown into the coroutine
                message = ("throw", error)


def _current_portal() -> Any:
    current = greenlet.getcurrent()
    return current if type(current) is _Portal else None


def _off_loop(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def method(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        portal = _current_portal()
        if portal is None or sock.gettimeout() == 0.0:
            return original(sock, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return portal.wait(loop.run_in_executor(_executor, functools.partial(original, sock, *args, **kwargs)))

    method._edgewise_original = original  # type: ignore[attr-defined]
    return method


def _getaddrinfo_off_loop(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        portal = _current_portal()
        if portal is None:
            return original(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return portal.wait(loop.run_in_executor(_executor, functools.partial(original, *args, **kwargs)))

    getaddrinfo._edgewise_original = original  # type: ignore[attr-defined]
    return getaddrinfo


def _install() -> None:
    """Wrap the blocking methods once per process (idempotent)."""
    for cls, names in ((socket.socket, _SOCKET_METHODS), (ssl.SSLSocket, _SSL_METHODS)):
        for name in names:
            current = getattr(cls, name)
            if not hasattr(current, "_edgewise_original"):
                setattr(cls, name, _off_loop(current))
    if not hasattr(socket.getaddrinfo, "_edgewise_original"):
        socket.getaddrinfo = _getaddrinfo_off_loop(socket.getaddrinfo)


_install()
