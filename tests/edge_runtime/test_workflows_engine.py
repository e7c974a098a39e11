"""The Workflows engine: pause, resume, terminate, restart, the time-scale setting, step timeouts, bad
step config, and instances that outlive their edge (closed mid-sleep or mid-step, then started again)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from config_projects import make_project
from workflow_fixtures import (
    env_of,
    eventually,
    poll,
    ran_lines,
    running_edge,
    workflow_project,
)

from edge_runtime.bindings.workflows.engine import TIME_SCALE_ENV
from edge_runtime.bindings.workflows.store import WorkflowStore
from edge_runtime.bindings.workflows.binding import WorkflowError
from edge_runtime.config import ConfigError, load_config
from edge_runtime.edge import Edge


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return workflow_project(tmp_path / "flows")


async def test_pause_stops_at_the_next_step_and_resume_goes_on(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        instance = await env_of(edge).WF.create(params={"mode": "slow_steps"})
        await eventually(lambda: ran_lines(project) == ["slow 0"])
        await instance.pause()
        assert (await instance.status())["status"] == "waitingForPause"
        assert (await poll(instance, ("paused",)))["status"] == "paused"
        await asyncio.sleep(0.3)
        assert ran_lines(project) == ["slow 0"] and (await instance.status())["status"] == "paused"
        await instance.resume()
        assert await poll(instance) == {"status": "complete", "output": "done"}
    assert ran_lines(project) == ["slow 0", "slow 1", "slow 2"]


async def test_resume_before_the_pause_took_hold_just_goes_on(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        instance = await env_of(edge).WF.create(params={"mode": "slow_steps"})
        await eventually(lambda: ran_lines(project) == ["slow 0"])
        await instance.pause()
        await instance.resume()
        assert (await instance.status())["status"] == "running"
        assert await poll(instance) == {"status": "complete", "output": "done"}
    assert ran_lines(project) == ["slow 0", "slow 1", "slow 2"]


async def test_pause_while_sleeping_holds_the_instance_after_its_deadline(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        instance = await env_of(edge).WF.create(params={"mode": "sleepy", "nap": "200 millisecond"})
        await poll(instance, ("waiting",))
        await instance.pause()
        assert (await instance.status())["status"] == "paused"
        await asyncio.sleep(0.4)
        assert ran_lines(project) == ["before"]
        await instance.pause()  # pausing a paused instance changes nothing
        assert (await instance.status())["status"] == "paused"
        await instance.resume()
        assert (await poll(instance))["output"] == 2
    assert ran_lines(project) == ["before", "after"]


async def test_terminate_ends_a_running_instance_for_good(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        instance = await env_of(edge).WF.create(params={"mode": "slow_steps"})
        await eventually(lambda: ran_lines(project) == ["slow 0"])
        await instance.terminate()
        assert (await instance.status()) == {"status": "terminated"}
        await asyncio.sleep(0.5)
        assert ran_lines(project) == ["slow 0"]
        with pytest.raises(WorkflowError, match="cannot terminate .* it is terminated"):
            await instance.terminate()
        with pytest.raises(WorkflowError, match="cannot send an event .* it is terminated"):
            await instance.send_event({"type": "approval", "payload": 1})
        with pytest.raises(WorkflowError, match="cannot resume .* it is terminated, not paused"):
            await instance.resume()


async def test_restart_runs_every_step_again(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        instance = await env_of(edge).WF.create(params={"mode": "chain"})
        await poll(instance)
        await instance.restart()
        assert (await poll(instance))["output"] == {"total": 15}
    assert ran_lines(project) == ["first", "second", "first", "second"]


async def test_the_time_scale_setting_shortens_default_retry_delays(project: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIME_SCALE_ENV, "0.001")  # Cloudflare's default 10 s exponential: 10 ms, then 20 ms
    async with running_edge(project, tmp_path / "state") as edge:
        started = time.monotonic()
        status = await poll(await env_of(edge).WF.create(params={"mode": "default_retry"}))
        assert time.monotonic() - started < 3
    assert status["output"] == {"retries": {"limit": 5, "delay": 10000, "backoff": "exponential"}, "timeout": 600000}
    assert ran_lines(project) == ["default 1", "default 2", "default 3"]


async def test_default_retries_wait_without_the_setting(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        instance = await env_of(edge).WF.create(params={"mode": "default_retry"})
        await poll(instance, ("waiting",))  # 10 s before the second attempt
        assert ran_lines(project) == ["default 1"]
        await instance.terminate()


async def test_a_step_past_its_timeout_fails_each_attempt(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        status = await poll(await env_of(edge).WF.create(params={"mode": "too_slow"}))
    assert status["error"] == {"name": "TimeoutError",
                               "message": "step 'slow' attempt 2 timed out after 0.1 s (config timeout)"}
    assert ran_lines(project) == ["slow", "slow"]


@pytest.mark.parametrize(("mode", "message"), [
    ("bad_duration", "step.sleep 'nap': 'ten seconds' is not a duration"),
    ("bad_config", 'retries must be a dict with "limit" and "delay"'),
])
async def test_bad_step_arguments_error_the_instance_clearly(project: Path, tmp_path: Path, mode: str,
                                                             message: str) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        status = await poll(await env_of(edge).WF.create(params={"mode": mode}))
    assert status["status"] == "errored"
    assert message in status["error"]["message"]


async def test_an_instance_closed_mid_sleep_wakes_at_the_same_deadline(project: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running_edge(project, state) as edge:
        instance = await env_of(edge).WF.create(id="sleeper", params={"mode": "sleepy", "nap": "700 millisecond"})
        await poll(instance, ("waiting",))
    store = WorkflowStore(state / "v3" / "workflows")
    nap = next(step for step in store.steps("demo-flow", "sleeper") if step.name == "nap")
    assert store.instance("demo-flow", "sleeper").status == "waiting"
    store.close()
    async with running_edge(project, state) as edge:
        instance = await env_of(edge).WF.get("sleeper")
        assert (await poll(instance, ("waiting",)))["status"] == "waiting"
        assert (await poll(instance))["output"] == 2
        assert time.time() >= nap.wake_at
    assert ran_lines(project) == ["before", "after"]


async def test_an_instance_closed_mid_step_runs_only_the_unfinished_steps_again(project: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running_edge(project, state) as edge:
        await env_of(edge).WF.create(id="busy", params={"mode": "slow_steps"})
        await eventually(lambda: ran_lines(project) == ["slow 0", "slow 1"])
    async with running_edge(project, state) as edge:
        assert (await poll(await env_of(edge).WF.get("busy")))["output"] == "done"
    assert ran_lines(project) == ["slow 0", "slow 1", "slow 1", "slow 2"]  # slow 1 had not finished: at least once


async def test_an_event_sent_while_the_edge_was_down_is_received(project: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running_edge(project, state) as edge:
        instance = await env_of(edge).WF.create(id="approver", params={"mode": "approval"})
        await poll(instance, ("waiting",))
    store = WorkflowStore(state / "v3" / "workflows")
    store.add_event("demo-flow", "approver", "approval", json.dumps({"ok": 1}))
    store.close()
    async with running_edge(project, state) as edge:
        status = await poll(await env_of(edge).WF.get("approver"))
    assert status["output"] == {"payload": {"ok": 1}, "type": "approval"}


async def test_a_class_without_run_is_refused_at_start(tmp_path: Path) -> None:
    project = workflow_project(tmp_path / "flows", class_name="Default")
    (project / "src" / "entry.py").write_text(
        "from workers import WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n    pass\n")
    with pytest.raises(ConfigError, match="class 'Default' of entry.py .* has no run"):
        async with running_edge(project, tmp_path / "state"):
            pass


async def test_a_workflow_of_another_worker_runs_in_that_worker(tmp_path: Path) -> None:
    """The caller binds with script_name; the class, and the env it runs with, are the other Worker's."""
    back = workflow_project(tmp_path / "back")
    (back / "wrangler.toml").write_text((back / "wrangler.toml").read_text().replace('name = "flows"',
                                                                                  'name = "back"', 1)
                                        + '\n[vars]\nWHO = "back"\n')
    front = make_project(tmp_path / "front", {"wrangler.toml": FRONT_TOML, "src/entry.py": "WHO = 'front'\n"})
    edge = Edge(load_config(front), workers=[load_config(back)], persist_to=tmp_path / "state")
    try:
        await edge.start()
        echoed = await poll(await env_of(edge).REMOTE.create(params={"mode": "echo"}))
        who = await poll(await env_of(edge).REMOTE.create(params={"mode": "who"}))
    finally:
        await edge.aclose()
    assert echoed == {"status": "complete", "output": {"echo": {"mode": "echo"}}}
    assert ran_lines(back) == ["echo"]
    assert who["output"] == "back"


FRONT_TOML = """\
name = "front"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]

[[workflows]]
binding = "REMOTE"
name = "demo-flow"
class_name = "Demo"
script_name = "back"
"""


async def test_each_turn_is_a_tail_event_with_the_workers_logs(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        with edge.hub.subscribe() as events:
            instance = await env_of(edge).WF.create(id="tailed", params={"mode": "sleepy", "nap": 100})
            await poll(instance)
            seen = [events.get_nowait() for _ in range(events.qsize())]
    turns = [event for event in seen if event["event"]["type"] == "workflow"]
    assert len(turns) == 2  # up to the sleep, then after it
    assert all(turn["outcome"] == "ok" and turn["entrypoint"] == "Demo" for turn in turns)
    assert turns[0]["event"] == {"type": "workflow", "entrypoint": "Demo", "workflowName": "demo-flow",
                                 "instanceId": "tailed"}
