"""Durable Objects written the way Cloudflare's docs and templates write them (their own __init__, stub
fetch of a URL, blockConcurrencyWhile, alarms, hibernating WebSockets), each project with a template's
wrangler.jsonc and pyproject.toml, run unchanged by a real `edgewise dev` shared by the project's tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from cloudflare_projects import WAIT_S, poll, write_project
from dev_process import DevServer
from websockets.sync.client import connect

# --- Durable Objects ---------------------------------------------------------------------------------

DO_ENTRY = """\
import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

from js import Object, WebSocketPair, WebSocketRequestResponsePair
from pyodide.ffi import create_proxy
from workers import DurableObject, Response, WorkerEntrypoint


class Greeter(DurableObject):
    # The changelog's shape: its own __init__ without super(), a sync fetch reading the SQL API.
    def __init__(self, ctx, env):
        self.ctx = ctx
        self.env = env

    def fetch(self, request):
        row = self.ctx.storage.sql.exec("SELECT 'Hello, ' || ? AS greeting", urlparse(request.url).path).one()
        return Response(row.greeting)


class Notes(DurableObject):
    # The batched-counter shape: state loaded under blockConcurrencyWhile (not awaited) from __init__,
    # an alarm set with a datetime, alarm(self, alarm_info), the synchronous storage.kv.
    def __init__(self, state, env):
        super().__init__(state, env)
        self.env = env
        self.notes = []
        self.ctx.blockConcurrencyWhile(self._load)

    async def _load(self):
        stored = await self.ctx.storage.get(["notes", "missing"])
        self.notes = json.loads(stored.get("notes") or "[]")

    async def add_note(self, text):
        self.notes.append(text)
        await self.ctx.storage.put("notes", json.dumps(self.notes))
        if await self.ctx.storage.getAlarm() is None:
            await self.ctx.storage.setAlarm(datetime.now(UTC) + timedelta(milliseconds=200))
        return len(self.notes)

    async def get_notes(self):
        return {"notes": self.notes, "flushed": self.ctx.storage.kv.get("flushed")}

    async def alarm(self, alarm_info):
        self.ctx.storage.kv.put("flushed", len(self.notes))


class Lobby(DurableObject):
    # The chatroom template's shape: self.state, Object.values(WebSocketPair.new()), a send before the
    # 101 goes out, getWebSockets() to broadcast, ws.close(code, reason) in webSocketClose.
    def __init__(self, state, env):
        super().__init__(state, env)
        self.state = state
        self.env = env

    async def fetch(self, request):
        if (request.headers.get("Upgrade") or "").lower() != "websocket":
            return Response("Expected WebSocket upgrade", status=426)
        pair = Object.values(WebSocketPair.new())
        client, server = pair[0], pair[1]
        self.state.acceptWebSocket(server, ["lobby"])
        self.state.setWebSocketAutoResponse(WebSocketRequestResponsePair.new("ping", "pong"))
        server.serializeAttachment({"name": urlparse(request.url).query})
        server.send(json.dumps({"type": "welcome", "online": len(self.state.getWebSockets())}))
        return Response(None, status=101, web_socket=client)

    async def webSocketMessage(self, ws, message):
        sender = ws.deserializeAttachment()["name"]
        for other in self.state.getWebSockets("lobby"):
            other.send(json.dumps({"from": sender, "text": message}))

    async def webSocketClose(self, ws, code, reason, wasClean):
        ws.close(code, reason)


class Echo(DurableObject):
    # The "Build a WebSocket server" example's shape (no hibernation): server.accept() and listeners.
    async def fetch(self, request):
        client, server = Object.values(WebSocketPair.new())
        server.accept()

        def on_message(event):
            data = event.data
            server.send(data if isinstance(data, str) else bytes(data)[::-1])

        server.addEventListener("message", create_proxy(on_message))
        return Response(None, status=101, web_socket=client)


class Ticker(DurableObject):
    # The firehose template's shape: setAlarm(ms since the epoch), alarm(self) with no argument,
    # WebSocketPair's sockets taken with object_values().
    async def start(self):
        await self.ctx.storage.setAlarm(int(time.time() * 1000) + 100)
        return await self.ctx.storage.getAlarm() is not None

    async def alarm(self):
        await self.ctx.storage.put("ticks", (await self.ctx.storage.get("ticks") or 0) + 1)

    async def ticks(self):
        return await self.ctx.storage.get("ticks")

    async def pair_kinds(self):
        client, server = WebSocketPair.new().object_values()
        return [type(client).__name__, type(server).__name__]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = urlparse(request.url).path.strip("/").split("/")
        if parts[0] == "tick":
            stub = self.env.TICKER.getByName("t")
            if request.method == "POST":
                return Response.json({"set": await stub.start(), "pair": await stub.pair_kinds()})
            return Response.json({"ticks": await stub.ticks()})
        if parts[0] == "greet":
            namespace = self.env.GREETER
            stub = namespace.get(namespace.idFromName(parts[1]))
            return await stub.fetch(request.url)
        if parts[0] == "notes":
            stub = self.env.NOTES.getByName(parts[1])
            if request.method == "POST":
                return Response.json({"count": await stub.add_note(await request.text())})
            return Response.json(await stub.get_notes())
        if parts[0] == "echo":
            return await self.env.ECHO.getByName("e").fetch(request)
        if parts[0] == "lobby":
            namespace = self.env.LOBBY
            return await namespace.get(namespace.idFromName(parts[1])).fetch(request)
        if parts[0] == "ids":
            namespace = self.env.NOTES
            unique = namespace.newUniqueId()
            again = namespace.idFromString(unique.toString())
            named = namespace.idFromName("x")
            return Response.json({"equal": again.equals(unique), "str": str(unique) == unique.toString(),
                                  "name": named.name, "unique_name": unique.name})
        return Response("Not Found", status=404)
"""


@pytest.fixture(scope="module")
def objects(serve: Callable[..., DevServer], tmp_path_factory: pytest.TempPathFactory) -> DevServer:
    root = write_project(tmp_path_factory.mktemp("durable-objects"), "python-durable-objects", {
        "durable_objects": {"bindings": [{"name": "GREETER", "class_name": "Greeter"},
                                         {"name": "NOTES", "class_name": "Notes"},
                                         {"name": "LOBBY", "class_name": "Lobby"},
                                         {"name": "TICKER", "class_name": "Ticker"},
                                         {"name": "ECHO", "class_name": "Echo"}]},
        "migrations": [{"tag": "v1", "new_sqlite_classes": ["Greeter", "Notes", "Lobby"]},
                       {"tag": "v2", "new_sqlite_classes": ["Ticker"]},
                       {"tag": "v3", "new_classes": ["Echo"]}],
    }, DO_ENTRY)
    return serve(root)


def test_a_durable_object_with_its_own_init_answers_a_stub_fetch_of_a_url(objects: DevServer) -> None:
    reply = objects.get("/greet/world")
    assert reply.status_code == 200, reply.text
    assert reply.text == "Hello, /greet/world"


def test_rpc_state_loaded_in_block_concurrency_while_and_an_alarm_set_with_a_datetime(objects: DevServer) -> None:
    added = [httpx.post(f"{objects.url}/notes/shop", content=text, timeout=10) for text in ("milk", "eggs")]
    assert [reply.json() for reply in added] == [{"count": 1}, {"count": 2}], [reply.text for reply in added]
    flushed = poll(lambda: objects.get("/notes/shop"), lambda reply: reply.json().get("flushed") == 2)
    assert flushed.json() == {"notes": ["milk", "eggs"], "flushed": 2}, objects.output[-3000:]


def test_ids_round_trip_through_their_string_form(objects: DevServer) -> None:
    reply = objects.get("/ids")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"equal": True, "str": True, "name": "x", "unique_name": None}


def test_hibernating_websockets_greet_and_broadcast(objects: DevServer) -> None:
    url = objects.url.replace("http", "ws") + "/lobby/main"
    with connect(url + "?alice", open_timeout=WAIT_S) as alice:
        assert json.loads(alice.recv(timeout=WAIT_S)) == {"type": "welcome", "online": 1}
        with connect(url + "?bob", open_timeout=WAIT_S) as bob:
            assert json.loads(bob.recv(timeout=WAIT_S)) == {"type": "welcome", "online": 2}
            alice.send("ping")
            assert alice.recv(timeout=WAIT_S) == "pong"  # the auto response, only to the sender
            alice.send("hi bob")
            expected = {"from": "alice", "text": "hi bob"}
            assert json.loads(alice.recv(timeout=WAIT_S)) == expected
            assert json.loads(bob.recv(timeout=WAIT_S)) == expected


def test_an_accepted_websocket_with_listeners_echoes_text_and_bytes(objects: DevServer) -> None:
    with connect(objects.url.replace("http", "ws") + "/echo", open_timeout=WAIT_S) as socket:
        socket.send("hello")
        assert socket.recv(timeout=WAIT_S) == "hello"
        socket.send(b"\x01\x02\x03")
        assert socket.recv(timeout=WAIT_S) == b"\x03\x02\x01"


def test_an_alarm_set_in_epoch_ms_runs_an_alarm_handler_without_arguments(objects: DevServer) -> None:
    started = httpx.post(f"{objects.url}/tick", timeout=10)
    assert started.status_code == 200, started.text
    assert started.json() == {"set": True, "pair": ["WebSocket", "WebSocket"]}
    ticked = poll(lambda: objects.get("/tick"), lambda reply: reply.json().get("ticks") == 1)
    assert ticked.json() == {"ticks": 1}, objects.output[-3000:]
