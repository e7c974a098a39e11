"""Workflows: the binding's call shapes and the Python step API (both dependency forms, retries,
sleeps, events), run by the edge's engine with the Worker's own code."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from workflow_fixtures import env_of, poll, ran_lines, running_edge, workflow_project

from edge_runtime.bindings.workflows.binding import DuplicateInstanceError, WorkflowError
from edge_runtime.config import ConfigError


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return workflow_project(tmp_path / "flows")


async def run_mode(project: Path, tmp_path: Path, mode: str, **payload: object) -> tuple[dict, list[str]]:
    async with running_edge(project, tmp_path / "state") as edge:
        instance = await env_of(edge).WF.create(params={"mode": mode, **payload})
        status = await poll(instance)
    return dict(status), ran_lines(project)


async def test_create_with_options_dict_or_keywords_and_get(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        wf = env_of(edge).WF
        first = await wf.create({"id": "explicit-id", "params": {"mode": "echo", "name": "py"}})
        second = await wf.create(id="kw_id-2", params={"mode": "echo", "nested": {"n": 42}})
        generated = await wf.create()
        assert (first.id, second.id) == ("explicit-id", "kw_id-2")
        assert len(generated.id) == 36
        fetched = await wf.get("kw_id-2")
        status = await poll(fetched)
        assert status == {"status": "complete", "output": {"echo": {"mode": "echo", "nested": {"n": 42}}}}
        assert status.output.echo.nested.n == 42  # JsDict: attribute access too
        assert (await poll(first))["output"]["echo"]["name"] == "py"


async def test_create_batch_and_its_refusals(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        wf = env_of(edge).WF
        made = await wf.create_batch([{"id": "batch-a", "params": {"mode": "echo", "n": 1}},
                                      {"id": "batch-b", "params": {"mode": "echo", "n": 2}}])
        assert [i.id for i in made] == ["batch-a", "batch-b"]
        assert [(await poll(i))["output"]["echo"]["n"] for i in made] == [1, 2]
        with pytest.raises(DuplicateInstanceError, match="'batch-b'"):
            await wf.createBatch([{"id": "batch-c"}, {"id": "batch-b"}])
        with pytest.raises(WorkflowError, match="no instance with id 'batch-c'"):
            await wf.get("batch-c")  # the batch created none
        with pytest.raises(DuplicateInstanceError, match="more than once"):
            await wf.create_batch([{"id": "x"}, {"id": "x"}])


async def test_bad_ids_params_and_unknown_instances_are_clear_errors(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        wf = env_of(edge).WF
        await wf.create(id="taken", params={"mode": "echo"})
        with pytest.raises(DuplicateInstanceError, match="already has an instance with id 'taken'"):
            await wf.create(id="taken")
        with pytest.raises(ValueError, match="not a valid instance id"):
            await wf.create(id="-starts-with-dash")
        with pytest.raises(TypeError, match="params of workflow instance 'p1' cannot be persisted"):
            await wf.create(id="p1", params={"when": object()})
        with pytest.raises(TypeError, match="unknown option 'payload'"):
            await wf.create(payload={})
        with pytest.raises(WorkflowError, match="workflow 'demo-flow' has no instance with id 'nope'"):
            await wf.get("nope")
        assert [row.id for row in edge.shared("workflows", lambda: None).store.instances("demo-flow")] == ["taken"]


async def test_a_fetch_handler_creates_an_instance(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url="http://e") as c:
            instance_id = (await c.get("/")).text
        status = await poll(await env_of(edge).WF.get(instance_id))
    assert status["output"]["echo"]["from"] == "fetch"


async def test_event_has_payload_timestamp_instance_id_and_workflow_name(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        instance = await env_of(edge).WF.create(id="meta-id", params={"mode": "meta", "tag": "xyz"})
        status = await poll(instance)
    assert status["output"] == {"payload": {"mode": "meta", "tag": "xyz"}, "id": "meta-id", "name": "demo-flow",
                                "stamp": True}


async def test_legacy_depends_runs_dependencies_first(project: Path, tmp_path: Path) -> None:
    status, lines = await run_mode(project, tmp_path, "chain")
    assert status == {"status": "complete", "output": {"total": 15}}
    assert lines == ["first", "second"]


@pytest.mark.parametrize("concurrent", [True, False])
async def test_concurrent_runs_dependencies_together(project: Path, tmp_path: Path, concurrent: bool) -> None:
    status, lines = await run_mode(project, tmp_path, "diamond", concurrent=concurrent)
    assert status["output"] == 6
    if concurrent:
        assert sorted(lines[:2]) == ["left start", "right start"]  # both began before either ended
    else:
        assert lines == ["left start", "left end", "right start", "right end"]


async def test_implicit_dependencies_by_parameter_name_with_ctx(tmp_path: Path) -> None:
    project = workflow_project(tmp_path / "flows", class_name="Implicit",
                               flags=', "python_workflows_implicit_dependencies"')
    async with running_edge(project, tmp_path / "state") as edge:
        status = await poll(await env_of(edge).WF.create())
    assert status == {"status": "complete", "output": {"total": 22}}
    assert ran_lines(project) == ["base"]  # resolved once though two steps depend on it


async def test_without_the_flag_a_step_needs_a_name(tmp_path: Path) -> None:
    project = workflow_project(tmp_path / "flows", class_name="Implicit")
    async with running_edge(project, tmp_path / "state") as edge:
        status = await poll(await env_of(edge).WF.create())
    assert status["status"] == "errored"
    assert status["error"]["name"] == "TypeError"
    assert "python_workflows_implicit_dependencies" in status["error"]["message"]


async def test_a_failing_step_is_retried_with_ctx_attempt(project: Path, tmp_path: Path) -> None:
    status, lines = await run_mode(project, tmp_path, "retry")
    assert status == {"status": "complete",
                      "output": {"attempt": 3, "step": "flaky", "count": 1, "limit": 3}}
    assert lines == ["attempt 1", "attempt 2", "attempt 3"]


async def test_a_step_out_of_retries_errors_the_instance(project: Path, tmp_path: Path) -> None:
    status, lines = await run_mode(project, tmp_path, "exhaust")
    assert status == {"status": "errored", "error": {"name": "ValueError", "message": "disk full"}}
    assert lines == ["doomed"] * 3


async def test_non_retryable_error_stops_retries(project: Path, tmp_path: Path) -> None:
    status, lines = await run_mode(project, tmp_path, "non_retryable")
    assert status == {"status": "errored", "error": {"name": "NonRetryableError", "message": "bad input"}}
    assert lines == ["stop"]


async def test_run_can_catch_a_failed_step(project: Path, tmp_path: Path) -> None:
    status, _ = await run_mode(project, tmp_path, "caught")
    assert status["output"] == {"caught": "KeyError", "message": "'missing'"}


async def test_a_result_that_is_not_json_is_a_clear_error(project: Path, tmp_path: Path) -> None:
    status, _ = await run_mode(project, tmp_path, "not_json")
    assert status["status"] == "errored"
    assert status["error"]["name"] == "TypeError"
    assert "the result of step 'object' cannot be persisted" in status["error"]["message"]
    status, _ = await run_mode(project, tmp_path, "output_object")
    assert "the output of run() cannot be persisted" in status["error"]["message"]


async def test_a_repeated_step_name_is_a_new_step_each_time(project: Path, tmp_path: Path) -> None:
    status, _ = await run_mode(project, tmp_path, "dup")
    assert status["output"] == [1, 2, 1]


async def test_rollback_all_undoes_the_done_steps_last_first(project: Path, tmp_path: Path) -> None:
    status, lines = await run_mode(project, tmp_path, "saga")
    assert status == {"status": "errored", "error": {"name": "ValueError", "message": "no stock"}}
    assert lines == ["reserve", "charge", "refund 20", "unreserve 7 after no stock"]


async def test_sleep_waits_then_goes_on(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        instance = await env_of(edge).WF.create(params={"mode": "sleepy"})
        assert (await poll(instance, ("waiting",)))["status"] == "waiting"
        assert ran_lines(project) == ["before"]
        status = await poll(instance)
    assert status == {"status": "complete", "output": 2}
    assert ran_lines(project) == ["before", "after"]


@pytest.mark.parametrize("as_text", [False, True])
async def test_sleep_until_a_datetime_or_iso_string(project: Path, tmp_path: Path, as_text: bool) -> None:
    status, _ = await run_mode(project, tmp_path, "until", as_text=as_text)
    assert status == {"status": "complete", "output": {"late": True}}


async def test_wait_for_event_takes_an_event_sent_before_or_after(project: Path, tmp_path: Path) -> None:
    async with running_edge(project, tmp_path / "state") as edge:
        wf = env_of(edge).WF
        waiting = await wf.create(params={"mode": "approval"})
        assert (await poll(waiting, ("waiting",)))["status"] == "waiting"
        await waiting.send_event({"type": "other", "payload": 0})
        await waiting.send_event({"type": "approval", "payload": {"approved": True}})
        early = await wf.create(params={"mode": "approval"})
        await early.send_event(type="approval", payload="early")
        assert (await poll(waiting))["output"] == {"payload": {"approved": True}, "type": "approval"}
        assert (await poll(early))["output"]["payload"] == "early"


async def test_wait_for_event_times_out(project: Path, tmp_path: Path) -> None:
    status, lines = await run_mode(project, tmp_path, "approval", timeout="100 millisecond")
    assert status["status"] == "errored"
    assert status["error"]["name"] == "TimeoutError"
    assert "received no 'approval' event within 100 millisecond" in status["error"]["message"]
    assert lines == []


async def test_unknown_class_name_stops_the_start_naming_class_and_file(tmp_path: Path) -> None:
    project = workflow_project(tmp_path / "flows", class_name="Missing")
    with pytest.raises(ConfigError, match=r"wrangler.toml: 'workflows' workflow 'demo-flow': class 'Missing' is not "
                                          r"defined in entry.py of Worker 'flows' \(.*src/entry.py\)"):
        async with running_edge(project, tmp_path / "state"):
            pass


FORMS_WORKER = '''\
from workers import WorkflowEntrypoint


class Forms(WorkflowEntrypoint):
    def run(self, event, step):  # a plain def run: what it returns (a coroutine here) is awaited
        return getattr(self, event["payload"])(step)

    async def bare(self, step):
        @step.do
        async def plain():
            return "bare decorator"
        return await plain()

    async def unknown_parameter(self, step):
        @step.do()
        async def needs(nothing_declared):
            return 1
        return await needs()

    async def legacy_depends(self, step):
        @step.do()
        async def first():
            return 1

        @step.do("second", [first])
        async def second(first):
            return first
        return await second()
'''


@pytest.mark.parametrize(("payload", "expected"), [
    ("bare", {"status": "complete", "output": "bare decorator"}),
    ("unknown_parameter", {"status": "errored", "error": {"name": "TypeError", "message": (
        "step 'needs' has a parameter 'nothing_declared' that names no earlier step (steps declared so far: none); "
        "name a parameter after a @step.do function to receive its result, or 'ctx' for the step context")}}),
    ("legacy_depends", {"status": "errored", "error": {"name": "TypeError", "message": (
        "step.do(depends=[...]) is the legacy form; with python_workflows_implicit_dependencies a step names its "
        "dependencies as parameters (def final(first_step, ctx): ...)")}}),
])
async def test_implicit_form_shapes_and_mistakes(tmp_path: Path, payload: str, expected: dict) -> None:
    project = workflow_project(tmp_path / "flows", class_name="Forms", worker=FORMS_WORKER,
                               flags=', "python_workflows_implicit_dependencies"')
    async with running_edge(project, tmp_path / "state") as edge:
        status = await poll(await env_of(edge).WF.create(params=payload))
    assert status == expected


@pytest.mark.parametrize(("date", "flags", "expected"), [
    ("2026-03-01", "", "complete"),  # implied from 2026-02-25 on
    ("2026-03-01", ', "no_python_workflows_implicit_dependencies"', "errored"),
    ("2026-02-24", "", "errored"),
])
async def test_the_implicit_form_follows_the_compatibility_date(tmp_path: Path, date: str, flags: str,
                                                                expected: str) -> None:
    project = workflow_project(tmp_path / "flows", class_name="Implicit", flags=flags)
    toml = project / "wrangler.toml"
    toml.write_text(toml.read_text().replace('compatibility_date = "2025-11-02"', f'compatibility_date = "{date}"'))
    async with running_edge(project, tmp_path / "state") as edge:
        status = await poll(await env_of(edge).WF.create())
    assert status["status"] == expected
