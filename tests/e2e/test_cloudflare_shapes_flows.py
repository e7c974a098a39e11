"""Workflows (both step forms) and Queues written the way Cloudflare's docs and templates write them, and
the features calling each other, run unchanged by a real `edgewise dev`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from cloudflare_projects import poll, write_project
from dev_process import DevServer

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
