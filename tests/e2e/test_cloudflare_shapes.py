"""Workers written the way Cloudflare's docs and templates write Python Workers (Durable Objects with
hibernating WebSockets and alarms, Workflows, Queues, service bindings, HTMLRewriter), each a project
with a wrangler.jsonc and a pyproject.toml like the templates', run unchanged by a real `edgewise dev`.
One dev server per project, shared by that project's tests.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from textwrap import dedent

import httpx
import pytest
from dev_process import DevServer
from websockets.sync.client import connect

PYPROJECT = """\
[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.12"
dependencies = []

[dependency-groups]
dev = [
    "workers-py",
    "workers-runtime-sdk"
]
"""
WAIT_S = 10.0


def write_project(root: Path, name: str, config: dict, entry: str) -> Path:
    """A template-shaped project: wrangler.jsonc, pyproject.toml and src/entry.py."""
    (root / "src").mkdir(parents=True)
    config = {"$schema": "node_modules/wrangler/config-schema.json", "name": name, "main": "src/entry.py",
              "compatibility_date": "2025-11-02", "compatibility_flags": ["python_workers"], **config}
    (root / "wrangler.jsonc").write_text("// made by the test, shaped like a Cloudflare template\n"
                                         + json.dumps(config, indent=2))
    (root / "pyproject.toml").write_text(PYPROJECT.format(name=name))
    (root / "src" / "entry.py").write_text(dedent(entry))
    return root


def poll(fetch: Callable[[], httpx.Response], until: Callable[[httpx.Response], bool],
         timeout_s: float = WAIT_S) -> httpx.Response:
    """`fetch()` again until `until(reply)` holds, or the last reply after the timeout."""
    deadline = time.monotonic() + timeout_s
    reply = fetch()
    while not until(reply) and time.monotonic() < deadline:
        time.sleep(0.05)
        reply = fetch()
    return reply


@pytest.fixture(scope="module")
def serve() -> Iterator[Callable[..., DevServer]]:
    """`serve(project, *dev_args)`: an `edgewise dev` kept for the module, killed at its end."""
    servers: list[DevServer] = []

    def start(project: Path, *extra: str) -> DevServer:
        servers.append(DevServer(project, *extra))
        return servers[-1]

    yield start
    for server in servers:
        server.stop(signal.SIGKILL)


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


# --- Workflows ---------------------------------------------------------------------------------------

WORKFLOW_ENTRY = """\
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint
from workers.workflows import NonRetryableError


class Checkout(WorkflowEntrypoint):
    # The Python Workflows docs' implicit form: @step.do() named by the function, dependencies and ctx
    # injected by parameter name, a retry config as a dict, sleep, wait_for_event, NonRetryableError.
    async def run(self, event, step):
        order = event["payload"]

        @step.do()
        async def price():
            return sum(item["qty"] * item["cents"] for item in order["items"])

        @step.do(config={"retries": {"limit": 3, "delay": "1 second", "backoff": "constant"},
                         "timeout": "1 minute"})
        async def charge(price, ctx):
            if ctx["attempt"] < 2:
                raise ConnectionError("card network is down")
            return {"cents": price, "attempt": ctx["attempt"]}

        await charge()
        await step.sleep("let the bank settle", "2 seconds")
        approval = await step.wait_for_event("wait for approval", "approved", timeout="1 hour")

        @step.do("ship it")
        async def ship(charge):
            if not approval["payload"]["ok"]:
                raise NonRetryableError("order was rejected")
            return {"shipped": charge["cents"], "attempt": charge["attempt"], "by": approval["payload"]["by"]}

        return {"order": event["instanceId"], "workflow": event["workflowName"], **(await ship())}


class Hello(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do("say hello")
        async def say_hello():
            return "hello"

        return await say_hello()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = urlparse(request.url).path.strip("/").split("/")
        if parts[0] == "start":
            instance = await self.env.CHECKOUT.create(id=parts[1], params=await request.json())
            return Response.json({"id": instance.id})
        if parts[0] == "kickoff":
            workflow = await self.env.HELLO.create()
            return Response("Just kicked off a workflow with ID: " + workflow.id)
        if parts[0] == "batch":
            created = await self.env.HELLO.create_batch([{"id": f"batch-{n}", "params": {"n": n}} for n in range(3)])
            return Response.json([instance.id for instance in created])
        if parts[0] == "status":
            workflow = self.env.HELLO if parts[1] == "hello" else self.env.CHECKOUT
            instance = await workflow.get(parts[2])
            return Response.json(await instance.status())
        if parts[0] == "approve":
            instance = await self.env.CHECKOUT.get(parts[1])
            await instance.send_event({"type": "approved", "payload": await request.json()})
            return Response("sent")
        return Response("Not Found", status=404)
"""
ORDER = {"items": [{"qty": 2, "cents": 250}, {"qty": 1, "cents": 100}]}


@pytest.fixture(scope="module")
def workflows(serve: Callable[..., DevServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    root = write_project(tmp_path_factory.mktemp("workflows"), "python-workflows", {
        "compatibility_date": "2026-08-21", "compatibility_flags": ["python_workers", "python_workflows"],
        "workflows": [{"name": "checkout", "binding": "CHECKOUT", "class_name": "Checkout"},
                      {"name": "hello", "binding": "HELLO", "class_name": "Hello"}],
    }, WORKFLOW_ENTRY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEWISE_WORKFLOWS_TIME_SCALE", "0.01")  # "2 seconds" sleeps 20 ms
        server = serve(root)
    yield server


def status(server: DevServer, kind: str, instance: str, until: Callable[[dict], bool]) -> dict:
    reply = poll(lambda: server.get(f"/status/{kind}/{instance}"),
                 lambda reply: reply.status_code == 200 and until(reply.json()))
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_implicit_step_form_retries_sleeps_waits_for_an_event_and_returns(workflows: DevServer) -> None:
    started = httpx.post(f"{workflows.url}/start/order-1", json=ORDER, timeout=10)
    assert started.json() == {"id": "order-1"}, started.text
    waiting = status(workflows, "checkout", "order-1", lambda body: body["status"] == "waiting")
    assert waiting["status"] == "waiting", waiting
    sent = httpx.post(f"{workflows.url}/approve/order-1", json={"ok": True, "by": "ana"}, timeout=10)
    assert sent.text == "sent"
    done = status(workflows, "checkout", "order-1", lambda body: body["status"] == "complete")
    assert done == {"status": "complete",
                    "output": {"order": "order-1", "workflow": "checkout", "shipped": 600, "attempt": 2,
                               "by": "ana"}}, workflows.output[-3000:]


def test_a_non_retryable_error_errors_the_instance(workflows: DevServer) -> None:
    httpx.post(f"{workflows.url}/start/order-2", json=ORDER, timeout=10).raise_for_status()
    status(workflows, "checkout", "order-2", lambda body: body["status"] == "waiting")
    httpx.post(f"{workflows.url}/approve/order-2", json={"ok": False, "by": "bo"}, timeout=10).raise_for_status()
    errored = status(workflows, "checkout", "order-2", lambda body: body["status"] == "errored")
    assert errored["status"] == "errored" and errored["error"]["message"] == "order was rejected", errored


def test_create_without_options_and_create_batch(workflows: DevServer) -> None:
    kicked = workflows.get("/kickoff")
    assert kicked.text.startswith("Just kicked off a workflow with ID: "), kicked.text
    instance = kicked.text.rsplit(" ", 1)[1]
    assert status(workflows, "hello", instance, lambda body: body["status"] == "complete")["output"] == "hello"
    batch = workflows.get("/batch")
    assert batch.json() == ["batch-0", "batch-1", "batch-2"], batch.text
    assert status(workflows, "hello", "batch-2", lambda body: body["status"] == "complete")["output"] == "hello"


LEGACY_WORKFLOW_ENTRY = """\
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint


class DAGWorkflow(WorkflowEntrypoint):
    # The DAG example's legacy form (compatibility date before 2026-02-25): named steps, depends=[...],
    # concurrent=True, dependency results as defaulted parameters.
    async def run(self, event, step):
        @step.do("dependency 1")
        async def first():
            return 1

        @step.do("dependency 2")
        async def second():
            return 2

        @step.do("final step", depends=[first, second], concurrent=True)
        async def summarize(res1=None, res2=None):
            return {"sum": res1 + res2, "n": event["payload"]["n"]}

        return await summarize()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        if url.path == "/start":
            workflow = await self.env.MY_WORKFLOW.create({"params": {"n": 7}})
            return Response(workflow.id)
        if "/status" in url.path:
            workflow = await self.env.MY_WORKFLOW.get(url.path.split("/")[-1])
            return Response.json(await workflow.status())
        return Response("Use /start", status=404)
"""


def test_the_legacy_step_form_with_depends(serve: Callable[..., DevServer],
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    root = write_project(tmp_path_factory.mktemp("workflows-dag"), "python-workflows-dag", {
        "compatibility_flags": ["python_workers", "python_workflows"],
        "workflows": [{"name": "workflows-demo", "binding": "MY_WORKFLOW", "class_name": "DAGWorkflow"}],
    }, LEGACY_WORKFLOW_ENTRY)
    server = serve(root)
    instance = server.get("/start").text
    done = poll(lambda: server.get(f"/status/{instance}"), lambda reply: reply.json().get("status") == "complete")
    assert done.json() == {"status": "complete", "output": {"sum": 3, "n": 7}}, server.output[-3000:]


# --- Queues ------------------------------------------------------------------------------------------

QUEUE_ENTRY = """\
import json
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/send":
            await self.env.JOBS.send({"jobId": "a", "kind": "ok"})
            await self.env.JOBS.sendBatch([{"body": {"jobId": "b", "kind": "ok"}},
                                           {"body": {"jobId": "c", "kind": "fail"}}])
            await self.env.JOBS.send("plain text", contentType="text")
            return Response("queued", status=202)
        if path == "/results":
            listed = await self.env.RESULTS.list()
            return Response.json({key["name"]: await self.env.RESULTS.get(key["name"], "json")
                                  for key in listed["keys"]})
        return Response("Not Found", status=404)

    # The one-argument form many Workers use: env and ctx are read from self.
    async def queue(self, batch):
        for message in batch.messages:
            body = message.body
            if batch.queue == "jobs-dlq":
                await self.env.RESULTS.put(f"dead:{body['jobId']}", json.dumps({"attempts": message.attempts}))
                message.ack()
            elif isinstance(body, dict) and body["kind"] == "fail":
                message.retry()
            else:
                key = body.get("jobId") if isinstance(body, dict) else "text"
                await self.env.RESULTS.put(f"done:{key}", json.dumps({
                    "attempts": message.attempts, "body": body, "id": isinstance(message.id, str)}))
                message.ack()
"""


def test_a_producer_and_a_one_argument_consumer_with_retries_and_a_dead_letter_queue(
        serve: Callable[..., DevServer], tmp_path_factory: pytest.TempPathFactory) -> None:
    root = write_project(tmp_path_factory.mktemp("queues"), "python-queues", {
        "kv_namespaces": [{"binding": "RESULTS", "id": "results"}],
        "queues": {
            "producers": [{"binding": "JOBS", "queue": "jobs"}],
            "consumers": [{"queue": "jobs", "max_batch_size": 10, "max_batch_timeout": 1, "max_retries": 1,
                           "dead_letter_queue": "jobs-dlq"},
                          {"queue": "jobs-dlq", "max_batch_size": 10, "max_batch_timeout": 1}],
        },
    }, QUEUE_ENTRY)
    server = serve(root)
    assert server.get("/send").status_code == 202
    results = poll(lambda: server.get("/results"), lambda reply: len(reply.json()) == 4)
    assert results.json() == {
        "done:a": {"attempts": 1, "body": {"jobId": "a", "kind": "ok"}, "id": True},
        "done:b": {"attempts": 1, "body": {"jobId": "b", "kind": "ok"}, "id": True},
        "done:text": {"attempts": 1, "body": "plain text", "id": True},
        "dead:c": {"attempts": 1},
    }, server.output[-3000:]


# --- Service bindings --------------------------------------------------------------------------------

BACK_ENTRY = """\
from urllib.parse import urlparse

from workers import DurableObject, Response, WorkerEntrypoint


class Counter(DurableObject):
    async def increment(self):
        value = (await self.ctx.storage.get("n") or 0) + 1
        await self.ctx.storage.put("n", value)
        return value


class Admin(WorkerEntrypoint):
    async def whoami(self):
        return {"entrypoint": "Admin", "has_counter": hasattr(self.env, "COUNTER")}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        body = await request.text()
        return Response(f"Hello from Worker B: {request.method} {urlparse(request.url).path} {body}")

    def add(self, a, b):  # a plain (sync) method, as the RPC docs' Python tab writes it
        return a + b

    async def fail(self):
        raise ValueError("worker b refuses")

    async def echo(self, value):
        return value

    async def page(self, title):
        return Response(f"<h1>{title}</h1>", headers={"content-type": "text/html"})

    async def apply(self, callback, value):
        return await callback(value) * 10

    async def describe(self, request):
        return {"method": request.method, "url": request.url, "body": await request.text()}
"""

FRONT_ENTRY = """\
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/add":
            result = await self.env.WORKER_B.add(1, 2)
            return Response(f"Result: {result}")
        if path.startswith("/forward/"):
            return await self.env.WORKER_B.fetch(request)
        if path == "/url":
            reply = await self.env.WORKER_B.fetch("https://worker-b/hello", method="POST", body="ping")
            return Response(await reply.text(), status=reply.status)
        if path == "/admin":
            return Response.json(await self.env.ADMIN.whoami())
        if path == "/fail":
            try:
                await self.env.WORKER_B.fail()
            except Exception as error:
                return Response(str(error), status=500)
            return Response("no error")
        if path == "/echo":
            return Response.json(await self.env.WORKER_B.echo({"list": [1, "x", None], "ok": True, "f": 1.5}))
        if path == "/page":
            return await self.env.WORKER_B.page("made by b")
        if path == "/callback":
            async def double(value):
                return value * 2
            return Response(str(await self.env.WORKER_B.apply(double, 4)))
        if path == "/describe":
            return Response.json(await self.env.WORKER_B.describe(request))
        if path == "/count":
            namespace = self.env.COUNTER
            return Response.json(await namespace.get(namespace.idFromName("shared")).increment())
        return Response("Not Found", status=404)
"""


@pytest.fixture(scope="module")
def services(serve: Callable[..., DevServer], tmp_path_factory: pytest.TempPathFactory) -> DevServer:
    root = tmp_path_factory.mktemp("services")
    front = write_project(root / "worker_a", "worker_a", {
        "services": [{"binding": "WORKER_B", "service": "worker_b"},
                     {"binding": "ADMIN", "service": "worker_b", "entrypoint": "Admin"}],
        "durable_objects": {"bindings": [{"name": "COUNTER", "class_name": "Counter", "script_name": "worker_b"}]},
    }, FRONT_ENTRY)
    back = write_project(root / "worker_b", "worker_b", {
        "durable_objects": {"bindings": [{"name": "COUNTER", "class_name": "Counter"}]},
        "migrations": [{"tag": "v1", "new_sqlite_classes": ["Counter"]}],
    }, BACK_ENTRY)
    return serve(front, "-c", str(front / "wrangler.jsonc"), "-c", str(back / "wrangler.jsonc"))


def test_rpc_to_a_sync_method_and_a_named_entrypoint(services: DevServer) -> None:
    assert services.get("/add").text == "Result: 3"
    assert services.get("/admin").json() == {"entrypoint": "Admin", "has_counter": True}
    assert services.get("/echo").json() == {"list": [1, "x", None], "ok": True, "f": 1.5}


def test_fetch_through_a_service_binding_with_a_request_and_with_a_url(services: DevServer) -> None:
    forwarded = httpx.put(f"{services.url}/forward/me", content="body", timeout=10)
    assert forwarded.text == "Hello from Worker B: PUT /forward/me body", forwarded.text
    assert services.get("/url").text == "Hello from Worker B: POST /hello ping"


def test_an_error_in_the_callee_reaches_the_caller_with_its_message(services: DevServer) -> None:
    reply = services.get("/fail")
    assert reply.status_code == 500 and "worker b refuses" in reply.text, reply.text


def test_responses_requests_and_functions_over_rpc(services: DevServer) -> None:
    page = services.get("/page")
    assert page.text == "<h1>made by b</h1>" and page.headers["content-type"] == "text/html", page.text
    assert services.get("/callback").text == "80"
    described = httpx.post(f"{services.url}/describe", content="hi", timeout=10)
    assert described.json() == {"method": "POST", "url": f"{services.url}/describe", "body": "hi"}, described.text


def test_a_durable_object_class_of_the_other_worker(services: DevServer) -> None:
    assert [services.get("/count").json() for _ in range(2)] == [1, 2]


# --- HTMLRewriter, js.WebSocket and the JS request ---------------------------------------------------

JS_ENTRY = """\
import asyncio
from urllib.parse import urlparse

import js
from js import HTMLRewriter, WebSocketPair
from pyodide.ffi import create_proxy
from workers import Response, WorkerEntrypoint
from workers.htmlrewriter import HTMLRewriter as SdkHTMLRewriter

PAGE = (
    '<html><head><meta property="og:title" content="old"><title>t</title></head>'
    '<body><a href="https://example.org/a">a</a><img src="https://example.org/i.png">'
    '<div id="widget"></div></body></html>'
)


class AttributeRewriter:
    def __init__(self, attr_name):
        self.attr_name = attr_name

    def element(self, element):
        attr = element.getAttribute(self.attr_name)
        if attr:
            element.setAttribute(self.attr_name, attr.replace("example.org", "example.com"))


class MetaRemover:
    def element(self, element):
        element.remove()


class MetaInjector:
    def element(self, element):
        element.prepend('<meta property="og:title" content="new" />', html=True)


class DocumentEnd:
    def end(self, end):
        end.append("<!-- rewritten -->", html=True)


class AppendOnId:
    def element(self, element):
        if element.getAttribute("id") == "widget":
            element.append('<div class="cf-turnstile"></div>', {"html": True})


# Built once at module level, handlers wrapped with create_proxy, as the docs' examples do.
href = create_proxy(AttributeRewriter("href"))
src = create_proxy(AttributeRewriter("src"))
rewriter = HTMLRewriter.new().on("a", href).on("img", src)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/links":
            res = Response(PAGE, headers={"Content-Type": "text/html; charset=utf-8"})
            if res.headers["Content-Type"].startswith("text/html"):
                return rewriter.transform(res)
            return res
        if path == "/meta":
            remover = create_proxy(MetaRemover())
            injector = create_proxy(MetaInjector())
            widget = create_proxy(AppendOnId())
            page = await self.env.ASSETS.fetch(request.url.replace("/meta", "/page"))
            rewritten = HTMLRewriter.new()
            rewritten.on('meta[property^="og:"]', remover)
            rewritten.on("head", injector)
            rewritten.on("div", widget)
            return rewritten.transform(page.js_object)
        if path == "/sdk-rewriter":
            # The runtime SDK's Python rewriter: plain handler objects, on_document, no proxies.
            res = Response(PAGE, headers={"Content-Type": "text/html"})
            return SdkHTMLRewriter().on("a", AttributeRewriter("href")).on_document(DocumentEnd()).transform(res)
        if path == "/js-request":
            js_request = request.js_object
            return Response.json({"method": js_request.method, "header": js_request.headers.get("x-test"),
                                  "same": request._js_request.url == request.url})
        if path == "/ws-echo":
            client, server = WebSocketPair.new().object_values()
            server.accept()
            server.addEventListener("message", create_proxy(lambda event: server.send("echo:" + event.data)))
            return Response(None, status=101, web_socket=client)
        if path == "/ws-client":
            url = request.url.replace("http", "ws", 1).replace("/ws-client", "/ws-echo")
            received = asyncio.get_running_loop().create_future()
            ws = js.WebSocket.new(url)

            def on_open(event):
                ws.send("ping")

            def on_message(event):
                if not received.done():
                    received.set_result(event.data)

            ws.addEventListener("open", create_proxy(on_open))
            ws.addEventListener("message", create_proxy(on_message))
            data = await asyncio.wait_for(received, 5)
            ws.close()
            return Response(data)
        return Response("Not Found", status=404)
"""


@pytest.fixture(scope="module")
def js_worker(serve: Callable[..., DevServer], tmp_path_factory: pytest.TempPathFactory) -> DevServer:
    root = write_project(tmp_path_factory.mktemp("js-apis"), "python-js-apis", {
        "assets": {"directory": "./public", "binding": "ASSETS", "run_worker_first": True},
    }, JS_ENTRY)
    (root / "public").mkdir()
    (root / "public" / "page.html").write_text(
        '<html><head><meta property="og:title" content="old"><title>t</title></head>'
        '<body><div id="widget"></div><div id="other"></div></body></html>')
    return serve(root)


def test_html_rewriter_with_proxied_handlers_built_at_module_level(js_worker: DevServer) -> None:
    reply = js_worker.get("/links")
    assert reply.status_code == 200, reply.text
    assert '<a href="https://example.com/a">' in reply.text and '<img src="https://example.com/i.png">' in reply.text


def test_html_rewriter_on_a_static_asset_through_its_js_object(js_worker: DevServer) -> None:
    reply = js_worker.get("/meta")
    assert reply.status_code == 200, reply.text
    assert reply.text == ('<html><head><meta property="og:title" content="new" /><title>t</title></head>'
                          '<body><div id="widget"><div class="cf-turnstile"></div></div><div id="other"></div>'
                          '</body></html>'), reply.text


def test_the_sdk_htmlrewriter_module(js_worker: DevServer) -> None:
    reply = js_worker.get("/sdk-rewriter")
    assert reply.status_code == 200, reply.text
    assert '<a href="https://example.com/a">' in reply.text and reply.text.endswith("<!-- rewritten -->")


def test_the_js_request_behind_the_python_one(js_worker: DevServer) -> None:
    reply = js_worker.get("/js-request", headers={"x-test": "yes"})
    assert reply.json() == {"method": "GET", "header": "yes", "same": True}, reply.text


def test_an_outbound_js_websocket_with_proxied_listeners(js_worker: DevServer) -> None:
    reply = js_worker.get("/ws-client")
    assert reply.status_code == 200 and reply.text == "echo:ping", reply.text


# --- An app in the image-redraw template's shape: FastAPI, R2, a queue and a workflow ----------------

REDRAW_API = """\
import uuid

from fastapi import FastAPI, HTTPException, Request, Response

app = FastAPI()


@app.post("/api/jobs", status_code=202)
async def create_job(request: Request):
    image = await request.body()
    if not image:
        raise HTTPException(400, "The request body is empty.")
    env = request.scope["env"]
    job_id = uuid.uuid4().hex
    content_type = request.headers.get("content-type", "application/octet-stream")
    await env.BUCKET.put(f"originals/{job_id}", image, httpMetadata={"contentType": content_type},
                         customMetadata={"jobId": job_id})
    await env.JOBS.send({"jobId": job_id})
    return {"jobId": job_id, "status": "queued"}


@app.get("/api/jobs/{job_id}")
async def get_job(job_id: str, request: Request):
    env = request.scope["env"]
    if await env.BUCKET.head(f"outputs/{job_id}") is not None:
        return {"jobId": job_id, "status": "complete"}
    try:
        instance = await env.REDRAW.get(job_id)
        status = await instance.status()
    except Exception:
        return {"jobId": job_id, "status": "queued"}
    return {"jobId": job_id, "status": status["status"], "error": status.get("error")}


@app.get("/api/images/output/{job_id}")
async def get_image(job_id: str, request: Request):
    obj = await request.scope["env"].BUCKET.get(f"outputs/{job_id}")
    if obj is None:
        raise HTTPException(404, "Image not found.")
    http_metadata = obj.httpMetadata
    media_type = http_metadata.contentType if http_metadata is not None else None
    blob = await obj.blob()
    return Response(content=await blob.bytes(), media_type=media_type or "application/octet-stream",
                    headers={"x-form-type": obj.customMetadata["formType"]})
"""

REDRAW_WORKFLOW = """\
from workers import Blob, FormData, Response, WorkflowEntrypoint
from workers.workflows import NonRetryableError


class RedrawWorkflow(WorkflowEntrypoint):
    async def run(self, event, step):
        job_id = event["payload"]["jobId"]
        bucket = self.env.BUCKET

        @step.do()
        async def verify_original():
            if await bucket.head(f"originals/{job_id}") is None:
                raise NonRetryableError(f"No original stored for job {job_id}.")
            return f"originals/{job_id}"

        @step.do(config={"retries": {"limit": 2, "delay": "1 second", "backoff": "exponential"}})
        async def redraw(verify_original):
            source = await bucket.get(verify_original)
            original = await source.blob()
            image_bytes = await original.bytes()
            form = FormData()
            form["prompt"] = "redraw it"
            form.append("input_image_0", Blob(image_bytes, original.content_type or "image/png"), "input.png")
            serialized = Response(form)
            await bucket.put(f"outputs/{job_id}", image_bytes[::-1],
                             httpMetadata={"contentType": original.content_type},
                             customMetadata={"jobId": job_id,
                                             "formType": serialized.headers["content-type"].split(";")[0]})
            return {"key": f"outputs/{job_id}"}

        return await redraw()
"""

REDRAW_ENTRY = """\
from image_redraw.api import app
from image_redraw.workflow import RedrawWorkflow
from workers import WorkerEntrypoint, asgi

__all__ = ["Default", "RedrawWorkflow"]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await asgi.fetch(app, request, self.env)

    async def queue(self, batch, env, ctx):
        pending = []
        for message in batch.messages:
            body = message.body
            job_id = body.get("jobId") if isinstance(body, dict) else None
            if not job_id:
                message.ack()
                continue
            pending.append((message, {"id": job_id, "params": {"jobId": job_id}}))
        if pending:
            await self.env.REDRAW.create_batch([spec for _, spec in pending])
            for message, _ in pending:
                message.ack()
"""


def test_an_app_in_the_image_redraw_templates_shape(serve: Callable[..., DevServer],
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    root = write_project(tmp_path_factory.mktemp("image-redraw"), "image-redraw-worker", {
        "compatibility_date": "2026-08-21",
        "compatibility_flags": ["python_workers", "python_workflows_implicit_dependencies"],
        "assets": {"directory": "./public", "run_worker_first": ["/api/*"]},
        "r2_buckets": [{"binding": "BUCKET", "bucket_name": "image-redraw"}],
        "queues": {"producers": [{"binding": "JOBS", "queue": "image-redraw-jobs"}],
                   "consumers": [{"queue": "image-redraw-jobs", "max_batch_size": 10, "max_batch_timeout": 1,
                                  "max_retries": 3}]},
        "workflows": [{"name": "image-redraw", "binding": "REDRAW", "class_name": "RedrawWorkflow"}],
        "observability": {"enabled": True},
    }, REDRAW_ENTRY)
    (root / "src" / "image_redraw").mkdir()
    (root / "src" / "image_redraw" / "__init__.py").write_text("")
    (root / "src" / "image_redraw" / "api.py").write_text(REDRAW_API)
    (root / "src" / "image_redraw" / "workflow.py").write_text(REDRAW_WORKFLOW)
    (root / "public").mkdir()
    (root / "public" / "index.html").write_text("<h1>redraw</h1>")
    server = serve(root)
    assert server.get("/").text == "<h1>redraw</h1>"
    created = httpx.post(f"{server.url}/api/jobs", content=b"\x89PNG-image", headers={"content-type": "image/png"},
                         timeout=10)
    assert created.status_code == 202, created.text
    job = created.json()["jobId"]
    done = poll(lambda: server.get(f"/api/jobs/{job}"),
                lambda reply: reply.json().get("status") in ("complete", "errored"))
    assert done.json() == {"jobId": job, "status": "complete"}, done.text
    image = server.get(f"/api/images/output/{job}")
    assert image.content == b"egami-GNP\x89" and image.headers["content-type"] == "image/png", image.text
    assert image.headers["x-form-type"] == "multipart/form-data"


# --- The features calling each other: an alarm starts a workflow, whose step sends to a queue, whose
# consumer calls the object back over RPC ------------------------------------------------------------

CHAIN_ENTRY = """\
from datetime import UTC, datetime, timedelta

from workers import DurableObject, Response, WorkerEntrypoint, WorkflowEntrypoint


class Room(DurableObject):
    async def kick(self):
        await self.ctx.storage.setAlarm(datetime.now(UTC) + timedelta(milliseconds=50))
        return "alarm set"

    async def alarm(self):
        instance = await self.env.FLOW.create(id="from-alarm", params={"room": "lobby"})
        await self.ctx.storage.put("workflow", instance.id)

    async def record(self, sender):
        seen = await self.ctx.storage.get("seen") or []
        await self.ctx.storage.put("seen", [*seen, sender])

    async def state(self):
        return {"workflow": await self.ctx.storage.get("workflow"), "seen": await self.ctx.storage.get("seen")}


class Flow(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do()
        async def notify():
            await self.env.EVENTS.send({"room": event["payload"]["room"], "from": event["workflowName"]})
            return "sent"

        return await notify()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        stub = self.env.ROOMS.getByName("lobby")
        if request.method == "POST":
            return Response(await stub.kick())
        return Response.json(await stub.state())

    async def queue(self, batch):
        for message in batch.messages:
            await self.env.ROOMS.getByName(message.body["room"]).record(message.body["from"])
"""


def test_an_alarm_starts_a_workflow_that_sends_to_a_queue_whose_consumer_calls_the_object(
        serve: Callable[..., DevServer], tmp_path_factory: pytest.TempPathFactory) -> None:
    root = write_project(tmp_path_factory.mktemp("chain"), "python-chain", {
        "compatibility_date": "2026-08-21",
        "durable_objects": {"bindings": [{"name": "ROOMS", "class_name": "Room"}]},
        "migrations": [{"tag": "v1", "new_sqlite_classes": ["Room"]}],
        "workflows": [{"name": "notify-room", "binding": "FLOW", "class_name": "Flow"}],
        "queues": {"producers": [{"binding": "EVENTS", "queue": "room-events"}],
                   "consumers": [{"queue": "room-events", "max_batch_size": 1, "max_batch_timeout": 1}]},
    }, CHAIN_ENTRY)
    server = serve(root)
    assert httpx.post(server.url, timeout=10).text == "alarm set"
    state = poll(lambda: server.get("/"), lambda reply: reply.json().get("seen") is not None)
    assert state.json() == {"workflow": "from-alarm", "seen": ["notify-room"]}, server.output[-3000:]
