"""What a workflow is, as the edge's Workers declare it: its name, class and Worker; which step form its
Worker uses; and Cloudflare's rule for instance ids."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...config_error import ConfigError

if TYPE_CHECKING:
    from ...config import WorkerConfig

IMPLICIT_DEPENDENCIES_FLAG = "python_workflows_implicit_dependencies"
IMPLICIT_DEPENDENCIES_DATE = "2026-02-25"  # on by default for Python Workers from this compatibility date


@dataclass(frozen=True)
class WorkflowDefinition:
    """A workflow as the Worker that runs it declares it (``[[workflows]]`` without a foreign script_name)."""

    name: str
    class_name: str
    script_name: str


def uses_implicit_dependencies(config: WorkerConfig) -> bool:
    flags = config.compatibility_flags
    if IMPLICIT_DEPENDENCIES_FLAG in flags:
        return True
    return f"no_{IMPLICIT_DEPENDENCIES_FLAG}" not in flags and config.compatibility_date >= IMPLICIT_DEPENDENCIES_DATE


def declared_definitions(configs: list[WorkerConfig]) -> dict[str, WorkflowDefinition]:
    """Every workflow the Workers declare, by name; a name given two different classes is a ConfigError."""
    found: dict[str, WorkflowDefinition] = {}
    for config in configs:
        for spec in config.bindings:
            if spec.kind != "workflows":
                continue
            settings = spec.settings
            definition = WorkflowDefinition(str(settings.get("name")), str(settings.get("class_name")),
                                            str(settings.get("script_name") or config.name))
            known = found.setdefault(definition.name, definition)
            if known != definition:
                raise ConfigError(config.file, "workflows", f"workflow {definition.name!r} is class "
                                  f"{definition.class_name!r} of Worker {definition.script_name!r} here, but class "
                                  f"{known.class_name!r} of Worker {known.script_name!r} elsewhere; a workflow name "
                                  "names one class")
    return found


def check_instance_id(instance_id: Any) -> str:
    """The id given (Cloudflare's rules), or a new random one."""
    if instance_id is None:
        return str(uuid.uuid4())
    if not isinstance(instance_id, str) or not instance_id or len(instance_id) > 100 \
            or not (instance_id[0].isascii() and (instance_id[0].isalnum() or instance_id[0] == "_")) \
            or not all(c.isascii() and (c.isalnum() or c in "-_") for c in instance_id):
        raise ValueError(f"{instance_id!r} is not a valid instance id: up to 100 characters of letters, digits, "
                         "'-' and '_', not starting with '-'")
    return instance_id
