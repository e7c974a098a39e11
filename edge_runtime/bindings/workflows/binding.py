"""The ``workflows`` binding: ``await env.WF.create(id=, params=)`` (or ``create({"id", "params"})``),
``create_batch([...])`` and ``get(id)``, each giving a ``WorkflowInstance`` with ``id``, ``status()``,
``pause()``, ``resume()``, ``terminate()``, ``restart()`` and ``send_event({"type", "payload"})``.

Instances run in the edge's Workflows engine (``engine.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgewise_sdk.workers import JsDict, to_jsdict

from ...config_error import ConfigError
from .engine import WorkflowEngine, WorkflowError, workflow_engine
from .store import DuplicateInstanceError

if TYPE_CHECKING:
    from ...config import BindingSpec
    from ...edge import Edge
    from ...scripts import Script

__all__ = ["DuplicateInstanceError", "Workflow", "WorkflowError", "WorkflowInstance", "bind"]

MAX_BATCH = 100  # createBatch's limit
CREATE_KEYS = ("id", "params")


def bind(spec: BindingSpec, edge: Edge, script: Script, colo: str) -> Workflow:
    """``{"binding": "WF", "name": "my-workflow", "class_name": "MyWorkflow", "script_name"?: "other-worker"}``."""
    for key in ("name", "class_name"):
        value = spec.settings.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(script.config.file, "workflows", f"binding {spec.name!r}: {key!r} must be a non-empty "
                              f"string (the workflow's {'name' if key == 'name' else 'class in the Worker'}), "
                              f"got {value!r}")
    return Workflow(str(spec.name), str(spec.settings["name"]), colo, workflow_engine(edge))


class Workflow:
    """One workflow binding at one PoP (instances it creates run at that PoP)."""

    def __init__(self, binding: str, workflow: str, colo: str, engine: WorkflowEngine) -> None:
        self.binding, self.workflow, self.colo = binding, workflow, colo
        self._engine = engine

    async def create(self, options: Mapping[str, Any] | None = None, /, **keywords: Any) -> WorkflowInstance:
        chosen = _create_options(options, keywords, "create")
        instance_id = await self._engine.create(self.workflow, chosen.get("id"), chosen.get("params"), self.colo)
        return WorkflowInstance(self.workflow, instance_id, self._engine)

    async def create_batch(self, batch: Any) -> list[WorkflowInstance]:
        """Creates up to 100 instances; ids are checked first, so a duplicate creates none of them."""
        if isinstance(batch, (str, bytes, Mapping)) or not hasattr(batch, "__iter__"):
            raise TypeError(f"create_batch takes a list of {{\"id\"?, \"params\"?}} dicts, got {type(batch).__name__}")
        items = [_create_options(item, {}, f"create_batch item {index}") for index, item in enumerate(batch)]
        if not items or len(items) > MAX_BATCH:
            raise ValueError(f"create_batch takes 1 to {MAX_BATCH} instances, got {len(items)}")
        ids = [item["id"] for item in items if item.get("id") is not None]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise DuplicateInstanceError(f"create_batch lists the instance id {repeated[0]!r} more than once")
        for instance_id in ids:
            if await self._engine.store_has(self.workflow, instance_id):
                raise DuplicateInstanceError(f"workflow {self.workflow!r} already has an instance with id "
                                             f"{instance_id!r}; create_batch created none of the {len(items)}")
        return [await self.create(item) for item in items]

    createBatch = create_batch

    async def get(self, instance_id: str) -> WorkflowInstance:
        """The instance with this id; WorkflowError if the workflow has none."""
        if not isinstance(instance_id, str):
            raise TypeError(f"get takes an instance id (a str), got {type(instance_id).__name__}")
        await self._engine.row(self.workflow, instance_id)
        return WorkflowInstance(self.workflow, instance_id, self._engine)

    def __repr__(self) -> str:
        return f"<Workflow {self.binding} -> {self.workflow!r}>"


class WorkflowInstance:
    """A handle on one instance; every call reads or changes the engine's state for it."""

    def __init__(self, workflow: str, instance_id: str, engine: WorkflowEngine) -> None:
        self.workflow, self.id = workflow, instance_id
        self._engine = engine

    async def status(self) -> JsDict:
        """``{"status", "error"?: {"name", "message"}, "output"?}``."""
        row = await self._engine.row(self.workflow, self.id)
        return to_jsdict(row.describe())

    async def pause(self) -> None:
        await self._engine.pause(self.workflow, self.id)

    async def resume(self) -> None:
        await self._engine.resume(self.workflow, self.id)

    async def terminate(self) -> None:
        await self._engine.terminate(self.workflow, self.id)

    async def restart(self) -> None:
        await self._engine.restart(self.workflow, self.id)

    async def send_event(self, event: Mapping[str, Any] | None = None, /, **keywords: Any) -> None:
        """``send_event({"type": ..., "payload": ...})`` or ``send_event(type=..., payload=...)``."""
        if event is not None and not isinstance(event, Mapping):
            raise TypeError(f"send_event takes {{\"type\", \"payload\"}}, got {type(event).__name__}")
        chosen = {**(event or {}), **keywords}
        unknown = sorted(set(chosen) - {"type", "payload"})
        if unknown:
            raise TypeError(f"send_event got an unknown key {unknown[0]!r} (keys: type, payload)")
        await self._engine.send_event(self.workflow, self.id, chosen.get("type"), chosen.get("payload"))

    sendEvent = send_event

    def __repr__(self) -> str:
        return f"<WorkflowInstance {self.workflow}/{self.id}>"


def _create_options(options: Any, keywords: Mapping[str, Any], operation: str) -> dict[str, Any]:
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"{operation} takes {{\"id\"?, \"params\"?}} (or id=, params=), got {type(options).__name__}")
    chosen = {**(options or {}), **keywords}
    unknown = sorted(set(chosen) - set(CREATE_KEYS))
    if unknown:
        raise TypeError(f"{operation} got an unknown option {unknown[0]!r} (options: id, params)")
    return chosen
