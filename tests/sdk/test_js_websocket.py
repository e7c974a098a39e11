"""``js.WebSocket``: the outbound client, against a real ``websockets`` server on a local port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

import js
from workers import WebSocketPair
from workers.websocket import CLOSED, CONNECTING, OPEN

WAIT_S = 5.0


async def _echo(connection: ServerConnection) -> None:
    await connection.send(f"hello {connection.subprotocol or 'none'}")
    async for message in connection:
        if message == "close please":
            await connection.close(4001, "as asked")
            return
        await connection.send(message)


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    async with serve(_echo, "127.0.0.1", 0, subprotocols=["chat"], select_subprotocol=_pick) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/room"


def _pick(connection: ServerConnection, offered: list[str]) -> str | None:
    return "chat" if "chat" in offered else None


class Events:
    """Records every event of one socket; ``wait(n)`` waits for the n-th."""

    def __init__(self, socket: js.WebSocket) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()
        for kind in ("open", "message", "close", "error"):
            socket.addEventListener(kind, self._record)

    def _record(self, event: Any) -> None:
        detail = {"message": lambda: event.data, "close": lambda: (event.code, event.reason, event.wasClean),
                  "error": lambda: event.message, "open": lambda: None}[event.type]()
        self.events.append((event.type, detail))
        self._changed.set()

    async def wait(self, count: int) -> list[tuple[str, Any]]:
        async with asyncio.timeout(WAIT_S):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.events


async def test_open_send_receive_and_close(server_url: str) -> None:
    socket = js.WebSocket.new(server_url)
    events = Events(socket)
    assert socket.readyState == CONNECTING == js.WebSocket.CONNECTING
    with pytest.raises(RuntimeError, match="CONNECTING"):
        socket.send("too early")
    await events.wait(2)
    assert events.events == [("open", None), ("message", "hello none")]
    assert socket.readyState == OPEN and socket.protocol == ""
    socket.send("one")
    socket.send(b"\x00\x01")
    socket.send(bytearray(b"ba"))
    await events.wait(5)
    assert events.events[2:] == [("message", "one"), ("message", b"\x00\x01"), ("message", b"ba")]
    socket.close(4000, "bye")
    assert socket.readyState == js.WebSocket.CLOSING
    with pytest.raises(RuntimeError, match="after close"):
        socket.send("late")
    await events.wait(6)
    assert events.events[5] == ("close", (4000, "bye", True))
    assert socket.readyState == CLOSED


async def test_plain_constructor_subprotocols_and_async_listeners(server_url: str) -> None:
    socket = js.WebSocket(server_url, ["chat"])
    got: list[str] = []
    done = asyncio.Event()

    async def on_message(event: Any) -> None:
        await asyncio.sleep(0)
        got.append(event.data)
        done.set()

    socket.onmessage = on_message
    async with asyncio.timeout(WAIT_S):
        await done.wait()
    assert got == ["hello chat"] and socket.protocol == "chat"
    socket.close()
    await _until(lambda: socket.readyState == CLOSED)


async def test_a_close_from_the_server(server_url: str) -> None:
    socket = js.WebSocket.new(server_url)
    events = Events(socket)
    socket.addEventListener("open", lambda event: socket.send("close please"))
    await events.wait(3)
    assert events.events[-1] == ("close", (4001, "as asked", True))
    assert socket.readyState == CLOSED


async def test_a_refused_connection_is_an_error_then_a_close() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = js.WebSocket.new(f"ws://127.0.0.1:{port}/")
    events = Events(client)
    await events.wait(2)
    assert [kind for kind, _ in events.events] == ["error", "close"]
    assert f"127.0.0.1:{port}" in events.events[0][1]
    assert events.events[1] == ("close", (1006, "", False))
    assert client.readyState == CLOSED


def test_bad_urls_and_no_event_loop() -> None:
    with pytest.raises(ValueError, match="ws:// or wss:// URL, not 'ftp://x'"):
        js.WebSocket.new("ftp://x")
    with pytest.raises(RuntimeError, match="must be made inside a handler"):
        js.WebSocket.new("ws://127.0.0.1:1/")


async def test_http_urls_map_to_ws(server_url: str) -> None:
    socket = js.WebSocket.new(server_url.replace("ws://", "http://"))
    assert socket.url == server_url
    await Events(socket).wait(2)
    socket.close()
    await _until(lambda: socket.readyState == CLOSED)


async def test_the_server_side_pair_is_unchanged() -> None:
    client, server = WebSocketPair.new().object_values()
    assert not isinstance(server, js.WebSocket)
    got: list[Any] = []
    server.addEventListener("message", lambda event: got.append(event.data))
    server.accept()
    client.send("x")
    assert got == ["x"] and server.readyState == OPEN


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_close_before_open_sends_no_open_event(server_url: str) -> None:
    socket = js.WebSocket.new(server_url)
    events = Events(socket)
    socket.close(1000, "changed my mind")
    await _until(lambda: socket.readyState == CLOSED)
    await events.wait(1)
    assert "open" not in [kind for kind, _ in events.events]
    assert events.events[-1][0] == "close" and events.events[-1][1][0] == 1000

