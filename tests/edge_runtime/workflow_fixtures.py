"""A Worker with a workflow for the Workflows tests, and helpers to run it on an edge and poll instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from config_projects import make_project

from edge_runtime.config import load_config
from edge_runtime.edge import Edge

TERMINAL = ("complete", "errored", "terminated")

WRANGLER_TOML = """\
name = "flows"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"{flags}]

[[workflows]]
binding = "WF"
name = "demo-flow"
class_name = "{class_name}"
"""

WORKER = '''\
import asyncio
import datetime
from pathlib import Path

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint
from workers.workflows import NonRetryableError

LOG = Path(__file__).parent.parent / "ran.log"


def ran(line):
    with LOG.open("a") as log:
        log.write(line + "\\n")


class Demo(WorkflowEntrypoint):
    async def run(self, event, step):
        mode = event["payload"].get("mode", "echo")
        return await getattr(self, mode)(event, step)

    async def echo(self, event, step):
        @step.do("echo")
        async def echo():
            ran("echo")
            return {"echo": event["payload"]}
        return await echo()

    async def meta(self, event, step):
        return {"payload": event["payload"], "id": event["instanceId"], "name": event["workflowName"],
                "stamp": isinstance(event["timestamp"], datetime.datetime)}

    async def who(self, event, step):
        return getattr(self.env, "WHO", None)

    async def chain(self, event, step):
        @step.do("first", config={"retries": {"limit": 0, "delay": 0}})
        async def first():
            ran("first")
            return 10

        @step.do("second", depends=[first])
        async def second(first):
            ran("second")
            return first + 5

        return {"total": await second()}

    async def diamond(self, event, step):
        @step.do("left")
        async def left():
            ran("left start")
            await asyncio.sleep(0.05)
            ran("left end")
            return 2

        @step.do("right")
        async def right():
            ran("right start")
            await asyncio.sleep(0.05)
            ran("right end")
            return 3

        @step.do("combined", depends=[left, right], concurrent=event["payload"]["concurrent"])
        async def combined(left, right):
            return left * right

        return await combined()

    async def retry(self, event, step):
        @step.do("flaky", config={"retries": {"limit": 3, "delay": "20 millisecond", "backoff": "constant"}})
        async def flaky(ctx):
            ran(f"attempt {ctx['attempt']}")
            if ctx["attempt"] < 3:
                raise ValueError("not yet")
            return {"attempt": ctx["attempt"], "step": ctx["step"]["name"], "count": ctx.step.count,
                    "limit": ctx["config"]["retries"]["limit"]}
        return await flaky()

    async def exhaust(self, event, step):
        @step.do("doomed", config={"retries": {"limit": 2, "delay": 10, "backoff": "linear"}})
        async def doomed():
            ran("doomed")
            raise ValueError("disk full")
        await doomed()

    async def non_retryable(self, event, step):
        @step.do("stop", config={"retries": {"limit": 5, "delay": 10}})
        async def stop():
            ran("stop")
            raise NonRetryableError("bad input")
        await stop()

    async def caught(self, event, step):
        @step.do("fails", config={"retries": {"limit": 0, "delay": 0}})
        async def fails():
            ran("fails")
            raise KeyError("missing")

        try:
            await fails()
        except Exception as error:
            return {"caught": type(error).__name__, "message": str(error)}

    async def sleepy(self, event, step):
        @step.do("before")
        async def before():
            ran("before")
            return 1
        await before()
        await step.sleep("nap", event["payload"].get("nap", "300 millisecond"))

        @step.do("after")
        async def after():
            ran("after")
            return 2
        return await after()

    async def until(self, event, step):
        @step.do("when")
        async def when():  # inside a step: a replay must see the same time
            return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(milliseconds=200)

        wake = await when()
        await step.sleep_until("until", wake.isoformat() if event["payload"].get("as_text") else wake)
        return {"late": datetime.datetime.now(datetime.timezone.utc) >= wake}

    async def approval(self, event, step):
        received = await step.wait_for_event("approve", "approval", timeout=event["payload"].get("timeout", "1 minute"))
        ran("approved")
        return {"payload": received["payload"], "type": received["type"]}

    async def not_json(self, event, step):
        @step.do("object")
        async def obj():
            return object()
        await obj()

    async def dup(self, event, step):
        @step.do("same")
        async def one():
            return 1

        @step.do("same")
        async def two():
            return 2

        return [await one(), await two(), await one()]

    async def default_retry(self, event, step):
        @step.do("default")
        async def default(ctx):
            ran(f"default {ctx['attempt']}")
            if ctx["attempt"] < 3:
                raise RuntimeError("flaky")
            return ctx["config"]

        return await default()

    async def too_slow(self, event, step):
        @step.do("slow", config={"retries": {"limit": 1, "delay": 0}, "timeout": "100 millisecond"})
        async def slow():
            ran("slow")
            await asyncio.sleep(5)

        await slow()

    async def bad_duration(self, event, step):
        await step.sleep("nap", "ten seconds")

    async def bad_config(self, event, step):
        @step.do("configured", config={"retries": {"limit": 1}})
        async def configured():
            return 1

        await configured()

    async def saga(self, event, step):
        try:
            @step.with_rollback("reserve")
            async def reserve():
                ran("reserve")
                return {"seat": 7}

            @reserve.undo
            async def unreserve(error, seat):
                ran(f"unreserve {seat['seat']} after {error}")

            await reserve()

            @step.with_rollback("charge")
            async def charge():
                ran("charge")
                return 20

            @charge.undo(config={"retries": {"limit": 0, "delay": 0}})
            def refund(error, amount):
                ran(f"refund {amount}")

            await charge()

            @step.do("ship", config={"retries": {"limit": 0, "delay": 0}})
            async def ship():
                raise ValueError("no stock")

            await ship()
        except Exception as error:
            await step.rollback_all(error)
            raise

    async def output_object(self, event, step):
        return {1, 2}

    async def slow_steps(self, event, step):
        for index in range(3):
            @step.do(f"slow {index}")
            async def slow():
                ran(f"slow {index}")
                await asyncio.sleep(0.2)
                return index
            await slow()
        return "done"


class Implicit(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do()
        async def base():
            ran("base")
            return 10

        @step.do()
        async def left(base):
            return base + 1

        @step.do()
        async def right(base, ctx):
            return base + ctx["attempt"]

        @step.do(concurrent=True)
        async def total(left, right):
            return left + right

        return {"total": await total()}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        instance = await self.env.WF.create(params={"mode": "echo", "from": "fetch"})
        return Response(instance.id)
'''


def workflow_project(root: Path, class_name: str = "Demo", flags: str = "", worker: str = WORKER) -> Path:
    return make_project(root, {"wrangler.toml": WRANGLER_TOML.format(class_name=class_name, flags=flags),
                               "src/entry.py": worker})


@asynccontextmanager
async def running_edge(project: Path, state: Path) -> AsyncIterator[Edge]:
    edge = Edge(load_config(project), persist_to=state)
    try:
        await edge.start()
        yield edge
    finally:
        await edge.aclose()


def env_of(edge: Edge) -> Any:
    return edge.script().instance(edge.colos[0])[1]


def ran_lines(project: Path) -> list[str]:
    log = project / "ran.log"
    return log.read_text().splitlines() if log.exists() else []


async def poll(instance: Any, until: tuple[str, ...] = TERMINAL, timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await instance.status()
        if status["status"] in until:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"instance {instance.id} is {dict(status)}, not {until}, after {timeout_s} s")
        await asyncio.sleep(0.02)


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
