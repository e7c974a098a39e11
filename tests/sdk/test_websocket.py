"""``WebSocketPair``: the Worker's ``server`` end and the runtime's ``client`` end, wired to each other."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from workers import WebSocket, WebSocketPair
from workers.websocket import CLOSED, CONNECTING, OPEN, CloseEvent, ErrorEvent, MessageEvent


def _pair() -> tuple[WebSocket, WebSocket]:
    client, server = WebSocketPair.new().object_values()
    return client, server


def test_unpacking_and_indexing() -> None:
    pair = WebSocketPair.new()
    client, server = pair
    assert (client, server) == (pair.client, pair.server) == pair.object_values()
    assert pair[0] is client and pair[1] is server
    assert client is not server
    assert isinstance(client, WebSocket) and isinstance(server, WebSocket)


def test_client_messages_reach_listeners_and_onmessage() -> None:
    client, server = _pair()
    via_listener: list[Any] = []
    via_attribute: list[Any] = []
    server.addEventListener("message", lambda event: via_listener.append(event.data))
    server.onmessage = lambda event: via_attribute.append(event)
    server.accept()
    assert server.readyState == OPEN
    client.send("x")
    client.send(b"\x00\x01")
    client.send(bytearray(b"ba"))
    assert via_listener == ["x", b"\x00\x01", b"ba"]
    assert [event.data for event in via_attribute] == ["x", b"\x00\x01", b"ba"]
    assert all(isinstance(event, MessageEvent) and event.type == "message" for event in via_attribute)


def test_events_before_accept_are_held_until_accept() -> None:
    client, server = _pair()
    received: list[str] = []
    server.addEventListener("message", lambda event: received.append(event.data))
    client.send("early-1")
    client.send("early-2")
    assert server.readyState == CONNECTING
    assert received == []
    server.accept()
    assert received == ["early-1", "early-2"]
    client.send("late")
    assert received == ["early-1", "early-2", "late"]


def test_close_held_before_accept_leaves_socket_closed() -> None:
    client, server = _pair()
    closes: list[CloseEvent] = []
    server.addEventListener("close", closes.append)
    client.close(1001, "going away")
    server.accept()
    assert [(event.code, event.reason) for event in closes] == [(1001, "going away")]
    assert server.readyState == CLOSED
    with pytest.raises(RuntimeError):
        server.send("too late")


async def test_close_held_before_bridge_leaves_client_closed() -> None:
    client, server = _pair()
    server.accept()
    server.close(1000, "short")
    outgoing = client.bridge()
    assert outgoing.get_nowait() == CloseEvent(1000, "short")
    assert client.readyState == CLOSED


def test_remove_event_listener() -> None:
    client, server = _pair()
    received: list[str] = []

    def listener(event: MessageEvent) -> None:
        received.append(event.data)

    server.addEventListener("message", listener)
    server.accept()
    client.send("a")
    server.removeEventListener("message", listener)
    server.removeEventListener("message", listener)  # removing twice is harmless
    client.send("b")
    assert received == ["a"]


def test_unknown_event_type_is_value_error() -> None:
    _, server = _pair()
    with pytest.raises(ValueError, match="bogus"):
        server.addEventListener("bogus", print)


async def test_server_send_reaches_the_client_bridge() -> None:
    client, server = _pair()
    server.accept()
    server.send("before bridge")
    outgoing = client.bridge()
    assert client.readyState == OPEN
    server.send("hello")
    server.send(b"\xff")
    events = [outgoing.get_nowait() for _ in range(3)]
    assert events == [MessageEvent("before bridge"), MessageEvent("hello"), MessageEvent(b"\xff")]
    assert outgoing.empty()


async def test_server_close_reaches_the_client_with_code_and_reason() -> None:
    client, server = _pair()
    server.accept()
    outgoing = client.bridge()
    server.close(4000, "done")
    assert outgoing.get_nowait() == CloseEvent(4000, "done")
    assert server.readyState == CLOSED and client.readyState == CLOSED
    server.close(1000, "again")  # a second close is a no-op
    assert outgoing.empty()


def test_client_close_reaches_server_listeners_and_onclose() -> None:
    client, server = _pair()
    closes: list[tuple[int, str]] = []
    server.addEventListener("close", lambda event: closes.append((event.code, event.reason)))
    server.onclose = lambda event: closes.append(("onclose", event.wasClean))
    server.accept()
    client.close(1000, "bye")
    assert closes == [(1000, "bye"), ("onclose", True)]
    assert server.readyState == CLOSED


def test_send_after_close_raises() -> None:
    client, server = _pair()
    server.accept()
    server.close()
    with pytest.raises(RuntimeError, match="after close"):
        server.send("x")
    client2, server2 = _pair()
    server2.accept()
    client2.close(1000, "")
    with pytest.raises(RuntimeError):
        server2.send("x")


async def test_async_listeners_run() -> None:
    client, server = _pair()
    replies: list[str] = []

    async def echo(event: MessageEvent) -> None:
        await asyncio.sleep(0)
        replies.append(event.data.upper())
        server.send(event.data.upper())

    server.addEventListener("message", echo)
    server.accept()
    outgoing = client.bridge()
    client.send("ping")
    assert await asyncio.wait_for(outgoing.get(), 1.0) == MessageEvent("PING")
    assert replies == ["PING"]


def test_failing_listener_fires_error_listeners_once(caplog: pytest.LogCaptureFixture) -> None:
    client, server = _pair()
    errors: list[ErrorEvent] = []
    received: list[str] = []

    def broken(event: MessageEvent) -> None:
        raise ValueError("listener broke")

    def broken_error_listener(event: ErrorEvent) -> None:
        errors.append(event)
        raise RuntimeError("error listener broke too")

    server.addEventListener("message", broken)
    server.addEventListener("message", lambda event: received.append(event.data))
    server.addEventListener("error", broken_error_listener)
    server.accept()
    with caplog.at_level(logging.ERROR, logger="edgewise.worker"):
        client.send("x")
    assert received == ["x"]  # the other listeners still run
    assert len(errors) == 1
    assert isinstance(errors[0].error, ValueError) and errors[0].message == "listener broke"
    assert [r.getMessage() for r in caplog.records] == [
        "WebSocket message listener failed", "WebSocket error listener failed"
    ]


async def test_failing_async_listener_fires_error_listeners() -> None:
    client, server = _pair()
    errors: asyncio.Queue[ErrorEvent] = asyncio.Queue()

    async def broken(event: MessageEvent) -> None:
        raise KeyError("async broke")

    server.addEventListener("message", broken)
    server.onerror = errors.put_nowait
    server.accept()
    client.send("x")
    event = await asyncio.wait_for(errors.get(), 1.0)
    assert isinstance(event.error, KeyError)
