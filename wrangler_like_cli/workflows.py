"""``edgewise workflows list|trigger|instances list|instances describe --local``: a Worker's local
Workflows, with wrangler's syntax, read from (and, for trigger, written to) the store `edgewise dev` keeps.

No dev server is needed: ``trigger`` records the instance as queued; a running `edgewise dev` picks it
up within a second or so, otherwise the next one runs it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edge_runtime.bindings import StateDir
from edge_runtime.bindings.workflows.config import NotPersistableError, encode
from edge_runtime.bindings.workflows.definitions import (
    WorkflowDefinition,
    check_instance_id,
    declared_definitions,
)
from edge_runtime.bindings.workflows.store import (
    DuplicateInstanceError,
    InstanceRow,
    StepRow,
    WorkflowStore,
)
from edge_runtime.config import ConfigError, WorkerConfig

from .local_data import local_options, open_project
from .output import console, fail

STATUS_LABELS = {"complete": "✅ Completed", "errored": "❌ Errored", "paused": "⏸️ Paused", "queued": "⌛ Queued",
                 "running": "▶ Running", "terminated": "🚫 Terminated", "waiting": "⏰ Waiting",
                 "waitingForPause": "⏱️ Waiting for Pause"}
STEP_TYPE_LABELS = {"step": "🎯 Step", "sleep": "💤 Sleeping", "waitForEvent": "👀 Waiting for event"}


@click.group()
def workflows() -> None:
    """Workflows, locally: the instances `edgewise dev` runs for the Worker's [[workflows]]."""


@workflows.group()
def instances() -> None:
    """List and describe the instances of a workflow."""


def _project(config_path: Path | None, env_name: str | None, persist_to: Path | None,
             local: bool) -> tuple[WorkerConfig, StateDir, dict[str, WorkflowDefinition]]:
    config, state = open_project(config_path, env_name, persist_to, local)
    try:
        definitions = declared_definitions([config])
    except ConfigError as error:
        fail(str(error))
        raise
    return config, state, definitions


def _definition(config: WorkerConfig, definitions: dict[str, WorkflowDefinition], name: str) -> WorkflowDefinition:
    """The workflow `name` (its name, or the binding name of its [[workflows]] entry)."""
    if name in definitions:
        return definitions[name]
    for spec in config.bindings:
        if spec.kind == "workflows" and spec.name == name:
            return definitions[str(spec.settings.get("name"))]
    declared = ", ".join(definitions) or "none: add a [[workflows]] entry"
    fail(f"{config.file.name} declares no workflow {name!r}; declared: {declared}")
    raise AssertionError  # unreachable: fail() exits


def _store(state: StateDir) -> WorkflowStore:
    return WorkflowStore(state.folder("workflows"))


@workflows.command("list")
@local_options
def list_workflows(**project: Any) -> None:
    """List the workflows the Worker declares, with how many instances each has."""
    config, state, definitions = _project(**project)
    if not definitions:
        click.echo(f"There are no Workflows in {config.file.name}: add a [[workflows]] entry.")
        return
    store = _store(state)
    try:
        counts = {name: len(store.instances(name)) for name in definitions}
    finally:
        store.close()
    click.echo(f"Showing {len(definitions)} workflow{'s' if len(definitions) > 1 else ''} (local):")
    table = Table("Name", "Script name", "Class name", "Instances")
    for definition in definitions.values():
        table.add_row(definition.name, definition.script_name, definition.class_name, str(counts[definition.name]))
    console.print(table)


@workflows.command()
@click.argument("name")
@click.argument("params", default="")
@click.option("--id", "instance_id", help="The instance's id (default: a random UUID).")
@local_options
def trigger(name: str, params: str, instance_id: str | None, **project: Any) -> None:
    """Create an instance of the workflow NAME, with PARAMS (a JSON string) as its event payload."""
    config, state, definitions = _project(**project)
    definition = _definition(config, definitions, name)
    try:
        payload = json.loads(params) if params else {}
    except json.JSONDecodeError as error:
        fail(f"Error while parsing instance parameters: {params!r} is not JSON ({error})")
    store = _store(state)
    try:
        instance_id = check_instance_id(instance_id)
        store.create(definition.name, instance_id, definition.class_name, definition.script_name,
                     encode(payload, "PARAMS"), None)
    except (DuplicateInstanceError, NotPersistableError, ValueError) as error:
        fail(str(error))
    finally:
        store.close()
    click.echo(f'🚀 Workflow instance "{instance_id}" has been queued successfully (local). A running '
               "`edgewise dev` of this Worker runs it within seconds; otherwise the next `edgewise dev` does.")


@instances.command("list")
@click.argument("name")
@click.option("--status", type=click.Choice(list(STATUS_LABELS)), help="Only instances with this status.")
@click.option("--reverse", is_flag=True, help="Oldest first (default: newest first).")
@click.option("--json", "as_json", is_flag=True, help="Print the instances as JSON.")
@local_options
def list_instances(name: str, status: str | None, reverse: bool, as_json: bool, **project: Any) -> None:
    """List the instances of the workflow NAME."""
    config, state, definitions = _project(**project)
    definition = _definition(config, definitions, name)
    store = _store(state)
    try:
        rows = store.instances(definition.name, (status,) if status else ())
    finally:
        store.close()
    rows = rows if reverse else rows[::-1]
    if as_json:
        click.echo(json.dumps([{"id": row.id, "status": row.status, "created_on": _iso(row.created_at),
                                "modified_on": _iso(row.modified_at)} for row in rows], indent=2))
        return
    if not rows:
        click.echo(f'There are no instances in workflow "{definition.name}". You can trigger it with '
                   f'"edgewise workflows trigger {definition.name} --local"')
        return
    click.echo(f"Showing {len(rows)} instance{'s' if len(rows) > 1 else ''}:")
    table = Table("Instance ID", "Created", "Modified", "Status")
    for row in rows:
        table.add_row(row.id, _local_time(row.created_at), _local_time(row.modified_at), STATUS_LABELS[row.status])
    console.print(table)


@instances.command("describe")
@click.argument("name")
@click.argument("instance_id", default="latest", metavar="[ID]")
@click.option("--json", "as_json", is_flag=True, help="Print the instance and its steps as JSON.")
@local_options
def describe(name: str, instance_id: str, as_json: bool, **project: Any) -> None:
    """Describe an instance of the workflow NAME (ID, or the latest): its status, output, error and steps."""
    config, state, definitions = _project(**project)
    definition = _definition(config, definitions, name)
    store = _store(state)
    try:
        row = _instance(store, definition.name, instance_id)
        steps = store.steps(definition.name, row.id)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"id": row.id, **row.describe(), "queued": _iso(row.created_at),
                               "start": _iso(row.started_at), "end": _iso(row.ended_at),
                               "steps": [_step_json(step) for step in steps]}, indent=2))
        return
    click.echo(_labelled(_instance_fields(row, steps)))
    click.echo("Steps:")
    for step in steps:
        click.echo("")
        click.echo(_labelled(_step_fields(step), indent="  "))


def _instance(store: WorkflowStore, workflow: str, instance_id: str) -> InstanceRow:
    if instance_id == "latest":
        rows = store.instances(workflow)
        if not rows:
            fail(f'There are no instances in workflow "{workflow}"')
        return rows[-1]
    row = store.instance(workflow, instance_id)
    if row is None:
        fail(f"workflow {workflow!r} has no instance with id {instance_id!r} "
             f"(edgewise workflows instances list {workflow} --local lists them)")
    return row  # type: ignore[return-value]


def _instance_fields(row: InstanceRow, steps: list[StepRow]) -> dict[str, str]:
    fields = {"Workflow Name": row.workflow, "Instance Id": row.id, "Status": STATUS_LABELS[row.status],
              "Queued": _local_time(row.created_at)}
    fields.update(_times(row.started_at, row.ended_at))
    done = [step.name for step in steps if step.status == "complete"]
    if done:
        fields["Last Successful Step"] = done[-1]
    if row.error is not None:
        error = json.loads(row.error)
        fields["Error"] = f"{error['name']}: {error['message']}"
    if row.output is not None:
        fields["Output"] = row.output
    return fields


def _step_fields(step: StepRow) -> dict[str, str]:
    fields = {"Name": step.name if step.count == 1 else f"{step.name} ({step.count})",
              "Type": STEP_TYPE_LABELS[step.type]}
    fields.update(_times(step.started_at, step.ended_at))
    if step.type == "step":
        fields["Success"] = {"complete": "✅ Yes", "errored": "❌ No"}.get(step.status, "▶ Running")
        fields["Attempts"] = str(step.attempt)
    if step.wake_at is not None and step.status != "complete":
        fields["Until"] = _local_time(step.wake_at)
    if step.result is not None:
        fields["Output"] = step.result
    if step.error is not None:
        error = json.loads(step.error)
        fields["Error"] = f"{error['name']}: {error['message']}"
    return fields


def _step_json(step: StepRow) -> dict[str, Any]:
    return {"name": step.name, "count": step.count, "type": step.type, "status": step.status,
            "attempts": step.attempt, "start": _iso(step.started_at), "end": _iso(step.ended_at),
            "output": None if step.result is None else json.loads(step.result),
            "error": None if step.error is None else json.loads(step.error)}


def _times(start: float | None, end: float | None) -> dict[str, str]:
    fields = {}
    if start is not None:
        fields["Start"] = _local_time(start)
    if end is not None:
        fields["End"] = _local_time(end)
    if start is not None:
        fields["Duration"] = f"{(end or datetime.now().timestamp()) - start:.3f} s"
    return fields


def _labelled(fields: dict[str, str], indent: str = "") -> str:
    width = max(len(label) for label in fields)
    return "\n".join(f"{indent}{label + ':':<{width + 1}} {value}" for label, value in fields.items())


def _local_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds).astimezone().isoformat()
