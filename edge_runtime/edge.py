"""The local edge of one dev run: the PoPs, each with its own Worker instance, and the router between them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .ai import Ai
from .ai_backends import AiBackends
from .bindings import OpenBindings, StateDir
from .bindings.kv_propagation import KvPropagation
from .env import Env, build_env
from .catalog import get_location
from .config import WorkerConfig
from .control_access import new_control_token
from .frontdoor import FrontDoor
from .geo import ClientLocator
from .loader import import_isolated
from .pop import EdgeServices, Pop
from .routing import AnycastRouter
from .tail import TailHub
from .worker import Worker

log = logging.getLogger("edgewise.edge")


class Edge:
    """Builds every PoP up front; a Worker that fails to load stops the whole start (nothing half-starts)."""

    def __init__(self, config: WorkerConfig, bindings: Mapping[str, Any] | None = None,
                 ai_backends: AiBackends | None = None, *, control_token: str | None = None,
                 show_secrets: bool = False, persist_to: Path | None = None,
                 python_modules: Path | None = None) -> None:
        """``bindings``: env objects given outright (tests), over those the config declares, which
        keep their data under ``persist_to`` (default: .wrangler/state beside the config).
        ``python_modules``: the folder the Worker's own packages are installed in (edge_runtime/packages.py)."""
        self.config = config
        self.python_modules = python_modules
        self.bindings = dict(bindings or {})
        self.state = StateDir.for_config(config, persist_to)
        self.declared = OpenBindings(config.bindings, self.state)
        self.declared.announce()
        # Kept for the whole run: a reload makes new bindings over the same backends and connections.
        self.kv_propagation = KvPropagation(config.edgewise.kv_propagation_ms / 1000.0)
        self.ai_backends = ai_backends if ai_backends is not None else AiBackends.for_config(config)
        self.control_token = control_token or new_control_token()
        tokens = [spec.token for spec in self.ai_backends.specs if spec.token] + [self.control_token]
        self.hub = TailHub(secret_values=() if show_secrets else tokens, redact=not show_secrets)
        self.locator = ClientLocator(config.edgewise.ip_locations, config.edgewise.client_location)
        self.services = EdgeServices(config, self.locator, self.hub,
                                     load_worker=lambda colo: self._load(self.config, colo))
        self.pops = [self._new_pop(spec.colo, spec.port, spec.healthy) for spec in config.edgewise.pops]
        self.router = AnycastRouter(self.pops)
        self.front_door = FrontDoor(self)

    def _new_pop(self, colo: str, port: int | None, healthy: bool) -> Pop:
        worker, env = self._load(self.config, colo)
        return Pop(get_location(colo), self.services, worker, env, port=port, healthy=healthy)

    def _load(self, config: WorkerConfig, colo: str) -> tuple[Worker, Env]:
        env = build_env(config.vars, config.secrets, self._bindings(config, colo))
        module, local_module_names = import_isolated(config.main, colo, env, self.python_modules)
        return Worker(module, config.uses_global_handlers, local_module_names), env

    def _bindings(self, config: WorkerConfig, colo: str) -> dict[str, Any]:
        """This PoP's bindings: the shared ones (KV seen through this PoP's view when writes propagate
        with a delay), and an AI binding that calls the backend nearest to it."""
        shared = {**self.declared.by_name, **self.bindings}
        if self.kv_propagation.delay_s > 0:
            shared = self.kv_propagation.for_pop_bindings(shared, colo)
        if config.ai_binding is None:
            return shared
        return {**shared, config.ai_binding: Ai(self.ai_backends, get_location(colo))}

    def reload(self, config: WorkerConfig | None = None) -> None:
        """Load fresh Worker instances (and vars) for every PoP, then swap them in; on failure keep the old.

        PoPs, ports and routing settings stay as started: changing those needs a restart.
        """
        config = config or self.config
        old = self.declared
        if config.bindings != old.specs:  # declarations changed: open them afresh, over the same data
            self.declared = OpenBindings(config.bindings, self.state)
        try:
            fresh = [(pop, *self._load(config, pop.colo)) for pop in self.pops]
        except BaseException:
            if self.declared is not old:
                self.declared.close()
                self.declared = old
            raise
        if self.declared is not old:
            old.close()
            self.declared.announce()
        self.config = self.services.config = config
        for pop, worker, env in fresh:
            pop.worker, pop.env = worker, env
            pop.forget_cached_cf()

    async def aclose(self) -> None:
        """Close what outlives requests: the AI backends' connections, the bindings' stores."""
        await self.ai_backends.aclose()
        self.declared.close()

    def pop(self, colo: str) -> Pop:
        return next(pop for pop in self.pops if pop.colo == colo.upper())

    @staticmethod
    def describe(pop: Pop) -> dict[str, Any]:
        location = pop.location
        return {"colo": pop.colo, "city": location.city, "country": location.country, "healthy": pop.healthy,
                "port": pop.port, "latitude": location.latitude, "longitude": location.longitude}
