"""``edgewise workflows list|trigger|instances list|instances describe --local``: wrangler's commands on the
store `edgewise dev` keeps, so an instance the CLI queues is run by the next edge, and what an edge ran
the CLI describes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from edge_runtime.config import load_config
from edge_runtime.edge import Edge
from wrangler_like_cli.main import cli

from workflow_fixtures import env_of, poll, ran_lines, workflow_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return workflow_project(tmp_path / "flows")


def edgewise(project: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--config", str(project / "wrangler.toml")], prog_name="edgewise")


def test_list_shows_the_declared_workflows(project: Path) -> None:
    result = edgewise(project, "workflows", "list", "--local")
    assert result.exit_code == 0, result.output
    assert "demo-flow" in result.output and "Demo" in result.output and "flows" in result.output


async def test_triggered_instance_runs_at_the_next_edge_and_is_described(project: Path) -> None:
    result = edgewise(project, "workflows", "trigger", "demo-flow", '{"mode": "chain"}', "--id", "from-cli", "--local")
    assert result.exit_code == 0, result.output
    assert 'Workflow instance "from-cli" has been queued successfully' in result.output
    assert "next `edgewise dev`" in result.output
    listed = edgewise(project, "workflows", "instances", "list", "demo-flow", "--local")
    assert "from-cli" in listed.output and "Queued" in listed.output

    edge = Edge(load_config(project))
    try:
        await edge.start()
        status = await poll(await env_of(edge).WF.get("from-cli"))
    finally:
        await edge.aclose()
    assert status == {"status": "complete", "output": {"total": 15}}
    assert ran_lines(project) == ["first", "second"]

    described = edgewise(project, "workflows", "instances", "describe", "demo-flow", "from-cli", "--local")
    assert described.exit_code == 0, described.output
    for text in ("Instance Id:", "from-cli", "✅ Completed", "Last Successful Step: second", "Steps:",
                 "Name:", "first", "🎯 Step", "Output:", "15"):
        assert text in described.output
    as_json = json.loads(edgewise(project, "workflows", "instances", "describe", "WF", "--json", "--local").output)
    assert as_json["id"] == "from-cli" and as_json["output"] == {"total": 15}
    assert [(s["name"], s["status"], s["output"]) for s in as_json["steps"]] == [
        ("first", "complete", 10), ("second", "complete", 15)]
    listed = json.loads(edgewise(project, "workflows", "instances", "list", "demo-flow", "--json", "--local").output)
    assert [(i["id"], i["status"]) for i in listed] == [("from-cli", "complete")]


async def test_an_instance_triggered_while_the_edge_runs_is_picked_up(project: Path) -> None:
    edge = Edge(load_config(project))
    try:
        await edge.start()
        result = edgewise(project, "workflows", "trigger", "WF", '{"mode": "echo", "n": 3}', "--id", "live")
        assert result.exit_code == 0, result.output
        status = await poll(await env_of(edge).WF.get("live"), timeout_s=5)
    finally:
        await edge.aclose()
    assert status == {"status": "complete", "output": {"echo": {"mode": "echo", "n": 3}}}


async def test_described_error_of_an_errored_instance(project: Path) -> None:
    edgewise(project, "workflows", "trigger", "demo-flow", '{"mode": "exhaust"}', "--id", "bad", "--local")
    edge = Edge(load_config(project))
    try:
        await edge.start()
        await poll(await env_of(edge).WF.get("bad"))
    finally:
        await edge.aclose()
    described = edgewise(project, "workflows", "instances", "describe", "demo-flow", "bad", "--local")
    assert "❌ Errored" in described.output
    assert "Error:" in described.output and "ValueError: disk full" in described.output
    assert "Attempts:" in described.output and "3" in described.output


@pytest.mark.parametrize(("args", "message"), [
    (("trigger", "demo-flow", "{not json"), "Error while parsing instance parameters"),
    (("trigger", "nope"), "declares no workflow 'nope'; declared: demo-flow"),
    (("trigger", "demo-flow", "--id", "-bad"), "not a valid instance id"),
    (("instances", "describe", "demo-flow", "missing"), "has no instance with id 'missing'"),
    (("instances", "list", "demo-flow", "--remote"), "drop --remote"),
])
def test_bad_input_is_a_clear_error(project: Path, args: tuple[str, ...], message: str) -> None:
    result = edgewise(project, "workflows", *args)
    assert result.exit_code == 1
    assert message in result.stderr


def test_a_duplicate_id_is_refused(project: Path) -> None:
    assert edgewise(project, "workflows", "trigger", "demo-flow", "--id", "once").exit_code == 0
    again = edgewise(project, "workflows", "trigger", "demo-flow", "--id", "once")
    assert again.exit_code == 1 and "already has an instance with id 'once'" in again.stderr


def test_no_instances_says_how_to_trigger(project: Path) -> None:
    result = edgewise(project, "workflows", "instances", "list", "demo-flow")
    assert 'edgewise workflows trigger demo-flow --local' in result.output


# ---- a real `edgewise dev` process, killed with SIGKILL mid-workflow ------------------------------------

CRASH_TOML = """\
name = "crashy"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]

[[workflows]]
binding = "WF"
name = "crash-flow"
class_name = "Crashy"
"""
CRASH_WORKER = '''\
from pathlib import Path

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint

LOG = Path(__file__).parent.parent / "steps.log"


class Crashy(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do("one")
        async def one():
            with LOG.open("a") as log:
                log.write("one\\n")
            return 1

        first = await one()
        await step.sleep("nap", "3 seconds")

        @step.do("two")
        async def two():
            with LOG.open("a") as log:
                log.write("two\\n")
            return first + 1

        return await two()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/start"):
            await self.env.WF.create(id="crash", params={})
            return Response("started")
        return Response.json(await (await self.env.WF.get("crash")).status())
'''
READY_TIMEOUT_S = 30.0


class DevProcess:
    """`edgewise dev` as a child process, ready once it prints its address."""

    def __init__(self, project: Path) -> None:
        self.port = free_port()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "wrangler_like_cli.main", "dev", str(project), "--port", str(self.port),
             "--latency", "off", "--no-reload", "--log-level", "info"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"})
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(READY_TIMEOUT_S):
            self.kill()
            pytest.fail("edgewise dev did not get ready:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        for line in self.popen.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))
            if "Ready on" in line:
                self.ready.set()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()  # SIGKILL: no shutdown code runs
        self.popen.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def test_an_instance_survives_kill_9_of_edgewise_dev_without_rerunning_done_steps(tmp_path: Path) -> None:
    project = tmp_path / "crashy"
    (project / "src").mkdir(parents=True)
    (project / "wrangler.toml").write_text(CRASH_TOML)
    (project / "src" / "entry.py").write_text(CRASH_WORKER)
    log = project / "steps.log"
    first = DevProcess(project)
    try:
        assert first.get("/start").text == "started"
        wait_until(lambda: first.get("/status").json()["status"] == "waiting", 10, "the instance to sleep")
        assert log.read_text() == "one\n"
    finally:
        first.kill()
    assert first.popen.returncode == -signal.SIGKILL
    second = DevProcess(project)
    try:
        wait_until(lambda: second.get("/status").json()["status"] == "complete", 15, "the instance to complete")
        assert second.get("/status").json() == {"status": "complete", "output": 2}
    finally:
        second.kill()
    assert log.read_text() == "one\ntwo\n"  # step one ran once, before the kill
