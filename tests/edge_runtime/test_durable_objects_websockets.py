"""The WebSocket hibernation API end to end: real WebSocket clients, through the front door and a Worker,
to sockets a Durable Object accepted with ctx.acceptWebSocket."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from durable_objects_fixtures import Edges, directory
from websockets.asyncio.client import connect

ROOM = """
    import json
    from js import WebSocketRequestResponsePair
    from workers import DurableObject, Response, WebSocketPair, WorkerEntrypoint

    BUILT = []
    CLOSED = []

    class Room(DurableObject):
        def __init__(self, ctx, env):
            super().__init__(ctx, env)
            BUILT.append(ctx.id.name)
            ctx.setWebSocketAutoResponse(WebSocketRequestResponsePair.new("ping", "pong"))

        async def fetch(self, request):
            if request.headers.get("upgrade") != "websocket":
                return Response("expected a WebSocket", status=426)
            client, server = WebSocketPair.new().object_values()
            name = request.url.rsplit("/", 1)[-1]
            self.ctx.acceptWebSocket(server, [name, "everyone"])
            server.serializeAttachment({"name": name})
            return Response(None, status=101, web_socket=client)

        async def webSocketMessage(self, ws, message):
            name = ws.deserializeAttachment()["name"]
            if message == "who":
                ws.send(json.dumps({"tags": self.ctx.getTags(ws), "open": len(self.ctx.getWebSockets()),
                                    "pinged": self.ctx.getWebSocketAutoResponseTimestamp(ws) is not None}))
                return
            for other in self.ctx.getWebSockets("everyone"):
                other.send(f"{name}: {message}")

        async def webSocketClose(self, ws, code, reason, was_clean):
            CLOSED.append((ws.deserializeAttachment()["name"], code, reason, len(self.ctx.getWebSockets())))

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return await self.env.ROOMS.getByName("lobby").fetch(request)
"""
BINDING = {"name": "ROOMS", "class_name": "Room"}
MIGRATION = {"tag": "v1", "new_sqlite_classes": ["Room"]}


@pytest.fixture
async def room(tmp_path, serve):
    edges = Edges(tmp_path)
    edge = await edges.make(ROOM, pops=("LHR",), bindings=[BINDING], migrations=[MIGRATION])
    ws_base = (await serve(edge.front_door)).replace("http://", "ws://")
    yield edge, ws_base
    await edges.aclose()


def _module(edge):
    return edge.script().instance("LHR")[0].module


async def test_a_message_is_broadcast_to_fifty_accepted_sockets(room) -> None:
    edge, ws_base = room
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(20):
        sockets = [await stack.enter_async_context(connect(f"{ws_base}/u{i}")) for i in range(50)]
        await sockets[0].send("hello")
        received = await asyncio.gather(*(ws.recv() for ws in sockets))
        assert received == ["u0: hello"] * 50
        [listed] = directory(edge).describe()
        assert listed["websockets"] == 50 and listed["name"] == "lobby"
    # one object serves them all; on a loaded machine it may hibernate between connects and wake again
    built = _module(edge).BUILT
    assert built and set(built) == {"lobby"}


async def test_the_object_hibernates_and_wakes_for_the_next_message(room) -> None:
    edge, ws_base = room
    async with connect(f"{ws_base}/ada") as ada, connect(f"{ws_base}/bob") as bob, asyncio.timeout(10):
        [key] = directory(edge).live
        while key in directory(edge).live:  # idle, with only hibernatable sockets: evicted
            await asyncio.sleep(0.05)
        await ada.send("ping")  # the auto-response answers without waking the object
        assert await ada.recv() == "pong"
        assert key not in directory(edge).live
        await bob.send("still here?")
        assert await ada.recv() == "bob: still here?"  # sockets and attachments outlived the instance
        assert await bob.recv() == "bob: still here?"
        await ada.send("who")
        assert await ada.recv() == '{"tags": ["ada", "everyone"], "open": 2, "pinged": true}'
    assert _module(edge).BUILT == ["lobby", "lobby"]


async def test_a_client_close_reaches_web_socket_close(room, wait_for) -> None:
    edge, ws_base = room
    closed = _module(edge).CLOSED
    async with connect(f"{ws_base}/stays") as stays, asyncio.timeout(10):
        async with connect(f"{ws_base}/leaves") as leaves:
            await leaves.send("bye")
            assert await stays.recv() == "leaves: bye"
            await leaves.close(code=4001, reason="done")
        await wait_for(lambda: closed == [("leaves", 4001, "done", 1)], timeout_s=5)
        await stays.send("who")
        assert '"open": 1' in await stays.recv()
