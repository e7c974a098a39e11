"""Worker projects with Durable Object bindings and migrations, and the edges built from them."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_runtime.bindings.durable_objects.directory import (
    DirectorySettings,
    ObjectDirectory,
    directory_of,
)
from edge_runtime.config import load_config
from edge_runtime.edge import Edge

COUNTER_BINDING = {"name": "COUNTER", "class_name": "Counter"}
COUNTER_MIGRATION = {"tag": "v1", "new_sqlite_classes": ["Counter"]}
# Short enough for tests; the defaults are Cloudflare's (seconds).
FAST = DirectorySettings(alarm_retry_base_s=0.05, block_concurrency_timeout_s=5.0, hibernate_after_s=0.2,
                         evict_after_s=5.0, sweep_every_s=0.05)


def toml_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)


def render_toml(name: str, pops: Sequence[str], bindings: Sequence[Mapping[str, Any]],
                migrations: Sequence[Mapping[str, Any]], latency: Mapping[str, Any] | None) -> str:
    lines = [f'name = "{name}"', 'main = "src/entry.py"', 'compatibility_date = "2025-11-02"',
             'compatibility_flags = ["python_workers"]', "", "[edgewise]", f"pops = {toml_value(list(pops))}"]
    lines += ["latency = false"] if latency is None else [
        "[edgewise.latency]", *(f"{key} = {toml_value(value)}" for key, value in latency.items())]
    for binding in bindings:
        lines += ["", "[[durable_objects.bindings]]", *(f"{k} = {toml_value(v)}" for k, v in binding.items())]
    for migration in migrations:
        lines += ["", "[[migrations]]", *(f"{k} = {toml_value(v)}" for k, v in migration.items())]
    return "\n".join(lines) + "\n"


def write_project(root: Path, source: str, *, name: str = "objects", pops: Sequence[str] = ("LHR", "SFO"),
                  bindings: Sequence[Mapping[str, Any]] = (COUNTER_BINDING,),
                  migrations: Sequence[Mapping[str, Any]] = (COUNTER_MIGRATION,),
                  latency: Mapping[str, Any] | None = None) -> Path:
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "wrangler.toml").write_text(render_toml(name, pops, bindings, migrations, latency))
    (root / "src" / "entry.py").write_text(textwrap.dedent(source))
    return root


class Edges:
    """Builds edges over one state folder (so a second edge is the first one restarted); closes them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.state = tmp_path / "state"
        self._open: list[Edge] = []

    async def make(self, source: str, *, workers: Sequence[tuple[str, str, Mapping[str, Any]]] = (),
                   settings: DirectorySettings = FAST, start: bool = True, **project: Any) -> Edge:
        """``workers``: more Workers of the edge, as (folder, source, write_project options)."""
        root = write_project(self.tmp_path / "main", source, **project)
        others = [load_config(write_project(self.tmp_path / folder, other_source, **options))
                  for folder, other_source, options in workers]
        edge = Edge(load_config(root), workers=others, persist_to=self.state)
        self._open.append(edge)
        directory_of(edge).settings = settings  # a fresh directory: before any object runs
        if start:
            await edge.start()
        return edge

    async def restart(self, edge: Edge, source: str, **options: Any) -> Edge:
        await self.close(edge)
        return await self.make(source, **options)

    async def close(self, edge: Edge) -> None:
        if edge in self._open:
            self._open.remove(edge)
            await edge.aclose()

    async def aclose(self) -> None:
        for edge in reversed(self._open):
            await edge.aclose()
        self._open.clear()


def env_at(edge: Edge, colo: str, script: str | None = None) -> Any:
    return edge.script(script).instance(colo)[1]


def directory(edge: Edge) -> ObjectDirectory:
    return directory_of(edge)
