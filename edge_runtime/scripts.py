"""The Workers of one edge: each config given to ``edgewise dev`` is a ``Script``, loaded at every PoP.

The first is the one the front door serves; the others are reached through bindings (service
bindings, Durable Object classes of another Worker, queue consumers). Each PoP imports its own copy
of each Worker's module, as each location runs its own isolates.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .config import WorkerConfig

if TYPE_CHECKING:
    from .bindings import OpenBindings
    from .env import Env
    from .worker import Worker


class Script:
    """One Worker of the edge: its config, its declared bindings and its instance at each PoP."""

    def __init__(self, config: WorkerConfig, declared: OpenBindings, python_modules: Path | None = None) -> None:
        self.config = config
        self.declared = declared
        self.python_modules = python_modules  # the folder its pyproject.toml dependencies are installed in
        self.workers: dict[str, Worker] = {}  # colo -> that PoP's loaded module and handlers
        self.envs: dict[str, Env] = {}

    @property
    def name(self) -> str:
        return self.config.name

    def instance(self, colo: str) -> tuple[Worker, Env]:
        """That PoP's loaded Worker and its env, as they are now (reloads replace them)."""
        try:
            return self.workers[colo], self.envs[colo]
        except KeyError:
            raise LookupError(f"Worker {self.name!r} has no instance at PoP {colo!r} "
                              f"(it runs at {', '.join(self.workers) or 'no PoP yet'})") from None

    def set_instance(self, colo: str, worker: Worker, env: Env) -> None:
        self.workers[colo], self.envs[colo] = worker, env

    def find_class(self, colo: str, class_name: str) -> type:
        """A class the Worker's main module defines (or imports), from that PoP's copy of it."""
        worker, _ = self.instance(colo)
        found = getattr(worker.module, class_name, None)
        if not isinstance(found, type):
            raise LookupError(f"class {class_name!r} is not defined in {self.config.main.name} of Worker "
                              f"{self.name!r} ({self.config.main}); the config names it as a class_name")
        return found
