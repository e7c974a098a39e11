"""``edgewise workflows list|trigger|instances list|instances describe --local``: wrangler's commands on the
store `edgewise dev` keeps, so an instance the CLI queues is run by the next edge, and what an edge ran
the CLI describes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edge_runtime.config import load_config
from edge_runtime.edge import Edge
from wrangler_like_cli.main import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge_runtime"))  # the Workflows test Worker
from workflow_fixtures import env_of, poll, ran_lines, workflow_project  # noqa: E402


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
