"""A Worker's WebSocketPair behind the real front door, driven by a real ``websockets`` client (checklist 21)."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

ECHO = """
    from workers import Response, WebSocketPair, WorkerEntrypoint

    CLOSES = []

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            if request.headers.get("upgrade") != "websocket":
                return Response("Expected Upgrade: websocket", status=426)
            if request.url.endswith("/refuse"):
                return Response("not here", status=403)
            client, server = WebSocketPair.new().object_values()
            server.accept()

            def on_message(event):
                if event.data == "bye":
                    server.close(4000, "worker says bye")
                else:
                    prefix = "on: " if request.url.endswith("/on") else "echo: "
                    server.send(prefix + event.data)

            if request.url.endswith("/on"):
                server.onmessage = on_message
            else:
                server.addEventListener("message", on_message)
            server.addEventListener("close", lambda event: CLOSES.append((event.code, event.reason)))
            server.send(f"hello from {request.cf.colo}")
            return Response(None, status=101, web_socket=client)
"""


@pytest.fixture
async def echo_edge(make_edge, serve):
    edge = make_edge(ECHO, pops=("DFW",))
    base = await serve(edge.front_door)
    return edge, base, base.replace("http://", "ws://")


async def test_echo_through_the_front_door(echo_edge) -> None:
    _, _, ws_base = echo_edge
    async with asyncio.timeout(10), connect(ws_base + "/") as ws:
        assert re.fullmatch(r"[0-9a-f]{16}-DFW", ws.response.headers["cf-ray"])
        assert await ws.recv() == "hello from DFW"
        await ws.send("hi")
        assert await ws.recv() == "echo: hi"
        await ws.send("again")
        assert await ws.recv() == "echo: again"


async def test_onmessage_attribute(echo_edge) -> None:
    _, _, ws_base = echo_edge
    async with asyncio.timeout(10), connect(ws_base + "/on") as ws:
        assert await ws.recv() == "hello from DFW"
        await ws.send("hi")
        assert await ws.recv() == "on: hi"


async def test_server_close_code_and_reason_reach_the_client(echo_edge) -> None:
    _, _, ws_base = echo_edge
    async with asyncio.timeout(10), connect(ws_base + "/") as ws:
        assert await ws.recv() == "hello from DFW"
        await ws.send("bye")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "worker says bye")


async def test_client_close_fires_the_workers_close_listener(echo_edge, wait_for) -> None:
    edge, _, ws_base = echo_edge
    closes = edge.pop("DFW").worker.module.CLOSES
    async with asyncio.timeout(10), connect(ws_base + "/") as ws:
        assert await ws.recv() == "hello from DFW"
        await ws.close(code=4001, reason="client done")
    await wait_for(lambda: closes == [(4001, "client done")], timeout_s=5)


async def test_non_upgrade_request_gets_the_workers_426(echo_edge) -> None:
    _, base, _ = echo_edge
    async with httpx.AsyncClient(base_url=base) as client, asyncio.timeout(10):
        response = await client.get("/")
    assert response.status_code == 426
    assert response.text == "Expected Upgrade: websocket"
    assert response.headers["cf-ray"].endswith("-DFW")


async def test_worker_refusing_an_upgrade_is_the_handshake_status(echo_edge) -> None:
    _, _, ws_base = echo_edge
    with pytest.raises(InvalidStatus) as refused:
        async with asyncio.timeout(10), connect(ws_base + "/refuse"):
            pass
    response = refused.value.response
    assert response.status_code == 403
    assert response.body == b"not here"
    assert response.headers["cf-ray"].endswith("-DFW")


async def test_throwing_on_upgrade_is_a_1101_refusal(make_edge, serve) -> None:
    edge = make_edge("""
        from workers import WorkerEntrypoint

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                raise RuntimeError("no sockets today")
    """, pops=("DFW",))
    ws_base = (await serve(edge.front_door)).replace("http://", "ws://")
    with pytest.raises(InvalidStatus) as refused:
        async with asyncio.timeout(10), connect(ws_base + "/"):
            pass
    assert refused.value.response.status_code == 500
    assert b"1101" in refused.value.response.body
    assert b"no sockets today" in refused.value.response.body
