"""The bindings a Worker's env holds besides vars, secrets and AI.

They are opened once per dev run from the config's declarations and shared by every PoP: as on
Cloudflare, every PoP sees the same data. Their data lives under the state folder
(``.wrangler/state`` beside the config, or ``--persist-to``), so it survives restarts.

Each kind that runs here has a module of its own with an ``open_binding(spec, state)`` function
(``OPENERS``). Kinds that reach other Workers of the edge (Durable Objects, service bindings, queue
producers, workflows) are bound per PoP instead, by the module's ``bind(spec, edge, script, colo)``
(``EDGE_BINDERS``): their shared state lives in the edge (``Edge.shared``). A declared binding of any
other kind is announced once at start and is an ``UnsupportedBinding`` in env: touching it raises
``BindingNotSupportedError``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import BindingSpec, WorkerConfig

log = logging.getLogger("edgewise.bindings")

STATE_FOLDER = Path(".wrangler") / "state"
# kind -> module (in this package) whose open_binding(spec, state) makes the env object
OPENERS: dict[str, str] = {
    "kv_namespaces": "kv",
    "d1_databases": "d1",
    "r2_buckets": "r2",
    "vectorize": "vectorize",
    "assets": "assets",
}

# kind -> module (in this package) whose bind(spec, edge, script, colo) makes one PoP's env object
EDGE_BINDERS: dict[str, str] = {
    "durable_objects": "durable_objects",
    "services": "services",
    "queues": "queues",
    "workflows": "workflows",
}


class BindingNotSupportedError(RuntimeError):
    """A Worker touched a binding of a kind edgewise declares but does not run."""


class UnsupportedBinding:
    """A declared binding of a kind edgewise does not run (yet): any use of it says so."""

    def __init__(self, spec: BindingSpec) -> None:
        object.__setattr__(self, "_spec", spec)

    def __getattr__(self, attribute: str) -> Any:
        spec: BindingSpec = object.__getattribute__(self, "_spec")
        raise BindingNotSupportedError(
            f"env.{spec.name} is a {spec.kind} binding: it is declared in the config, but edgewise does not "
            f"run {spec.kind} bindings yet (docs/bindings.md lists the kinds it runs)")

    def __repr__(self) -> str:
        spec: BindingSpec = object.__getattribute__(self, "_spec")
        return f"<unsupported {spec.kind} binding {spec.name}>"


class StateDir:
    """Where bindings keep their data: one folder per kind under ``root``, made on first use."""

    def __init__(self, root: Path, config_file: Path | None = None) -> None:
        self.root = root
        self.config_file = config_file  # the declaring config: relative paths in settings start at its folder

    @classmethod
    def for_config(cls, config: WorkerConfig, persist_to: Path | None = None) -> StateDir:
        """``--persist-to DIR``, or ``.wrangler/state`` beside the config, as wrangler keeps it."""
        return cls((persist_to or config.root / STATE_FOLDER).resolve() / "v3", config.file)

    def folder(self, kind: str, *parts: str) -> Path:
        path = self.root.joinpath(kind, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


class OpenBindings:
    """The env objects of a config's bindings, by name, opened once and closed at the end."""

    def __init__(self, specs: tuple[BindingSpec, ...], state: StateDir) -> None:
        self.specs, self.state = specs, state
        self.by_name: dict[str, Any] = {}
        self.unsupported = [spec for spec in specs if spec.kind not in OPENERS and spec.kind not in EDGE_BINDERS]
        try:
            for spec in specs:
                if spec.kind in OPENERS:
                    binding = _opener(spec.kind)(spec, state)
                    if spec.name is not None:
                        self.by_name[spec.name] = binding
                elif spec.name is not None and spec.kind not in EDGE_BINDERS:
                    self.by_name[spec.name] = UnsupportedBinding(spec)
        except BaseException:
            self.close()
            raise

    def announce(self) -> None:
        """One warning line per declared binding that does not run here."""
        for spec in self.unsupported:
            what = f"env.{spec.name}" if spec.name is not None else "the Worker's static assets"
            log.warning("%s (%s) is declared, but edgewise does not run %s yet: using it raises an error",
                        what, spec.kind, spec.kind)

    def close(self) -> None:
        for binding in self.by_name.values():
            close: Callable[[], None] | None = getattr(type(binding), "close", None)
            if close is not None:
                close(binding)


def edge_binder(kind: str) -> Callable[..., Any]:
    """The ``bind(spec, edge, script, colo)`` of an edge-bound kind."""
    return importlib.import_module(f"{__name__}.{EDGE_BINDERS[kind]}").bind


def _opener(kind: str) -> Callable[[BindingSpec, StateDir], Any]:
    return importlib.import_module(f"{__name__}.{OPENERS[kind]}").open_binding

