"""The local edge of one dev run: the PoPs, each with its own Worker instance, and the router between them."""

from __future__ import annotations

import logging
import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .ai import Ai
from .ai_backends import AiBackends
from .bindings import EDGE_BINDERS, OpenBindings, StateDir, edge_binder
from .bindings.kv_propagation import KvPropagation
from .bindings.queues.broker import queue_broker
from .env import Env, build_env
from .catalog import get_location
from .config import ConfigError, WorkerConfig
from .control_access import new_control_token
from .frontdoor import FrontDoor
from .geo import ClientLocator
from .invocation import invoke
from .loader import import_isolated
from .pop import EdgeServices, Pop
from .routing import AnycastRouter, pop_to_pop_rtt_ms
from .scripts import Script
from .tail import TailHub
from .worker import Worker

log = logging.getLogger("edgewise.edge")
T = TypeVar("T")
_tasks: set[asyncio.Future[Any]] = set()


def _spawn(coroutine: Any) -> None:
    task = asyncio.ensure_future(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class Edge:
    """Builds every PoP up front; a Worker that fails to load stops the whole start (nothing half-starts).

    ``config`` is the Worker the front door serves; ``workers`` are more Workers of the same edge
    (``edgewise dev -c a -c b``), reached through bindings. All of them keep their data under one state
    folder: ``persist_to``, or .wrangler/state beside the first config.
    """

    def __init__(self, config: WorkerConfig, bindings: Mapping[str, Any] | None = None,
                 ai_backends: AiBackends | None = None, *, control_token: str | None = None,
                 show_secrets: bool = False, persist_to: Path | None = None,
                 python_modules: Path | None = None, workers: Sequence[WorkerConfig] = (),
                 workers_python_modules: Mapping[str, Path | None] | None = None) -> None:
        """``bindings``: env objects given outright (tests), over those the config declares.
        ``python_modules``: the folder the Worker's own packages are installed in (edge_runtime/packages.py);
        ``workers_python_modules``: the same for ``workers``, by Worker name."""
        self.config = config
        self.bindings = dict(bindings or {})
        self.state = StateDir.for_config(config, persist_to)
        self.started = self._closed = False
        self._shared: dict[str, Any] = {}
        self.scripts: dict[str, Script] = {}
        try:
            for worker_config, packages in [(config, python_modules),
                                            *((c, (workers_python_modules or {}).get(c.name)) for c in workers)]:
                if worker_config.name in self.scripts:
                    raise ConfigError(worker_config.file, "name", f"{worker_config.name!r} is also the name of "
                                      f"{self.scripts[worker_config.name].config.file}; each Worker of a dev run needs "
                                      "its own name")
                declared = OpenBindings(worker_config.bindings, self.state)
                self.scripts[worker_config.name] = Script(worker_config, declared, packages)
                declared.announce()
            # Kept for the whole run: a reload makes new bindings over the same backends and connections.
            self.kv_propagation = KvPropagation(config.edgewise.kv_propagation_ms / 1000.0)
            self.ai_backends = ai_backends if ai_backends is not None else AiBackends.for_config(config)
            self.control_token = control_token or new_control_token()
            tokens = [spec.token for spec in self.ai_backends.specs if spec.token] + [self.control_token]
            self.hub = TailHub(secret_values=() if show_secrets else tokens, redact=not show_secrets)
            self.locator = ClientLocator(config.edgewise.ip_locations, config.edgewise.client_location)
            self.services = EdgeServices(config, self.locator, self.hub,
                                         load_worker=lambda colo: self._load(self.script(), colo))
            self.pops = [Pop(get_location(spec.colo), self.services, self.script(), port=spec.port,
                             healthy=spec.healthy) for spec in config.edgewise.pops]
            for script in self.scripts.values():
                for pop in self.pops:
                    script.set_instance(pop.colo, *self._load(script, pop.colo))
        except BaseException:
            self._close_bindings()
            raise
        self.router = AnycastRouter(self.pops)
        self.front_door = FrontDoor(self)

    @property
    def python_modules(self) -> Path | None:
        return self.script().python_modules

    @property
    def declared(self) -> OpenBindings:
        """The primary Worker's declared bindings."""
        return self.script().declared

    @property
    def colos(self) -> tuple[str, ...]:
        return tuple(pop.colo for pop in self.pops)

    def script(self, name: str | None = None) -> Script:
        """A Worker of this edge by name (None: the one the front door serves)."""
        if name is None:
            return next(iter(self.scripts.values()))
        try:
            return self.scripts[name]
        except KeyError:
            raise LookupError(f"no Worker named {name!r} runs in this edge (running: {', '.join(self.scripts)}); "
                              "give its config too: edgewise dev -c first/wrangler.jsonc -c other/wrangler.jsonc") from None

    def _load(self, script: Script, colo: str, config: WorkerConfig | None = None) -> tuple[Worker, Env]:
        config = config or script.config
        env = build_env(config.vars, config.secrets, self._bindings(script, config, colo))
        module, local_module_names = import_isolated(config.main, colo, env, script.python_modules)
        return Worker(module, config.uses_global_handlers, local_module_names), env

    def _bindings(self, script: Script, config: WorkerConfig, colo: str) -> dict[str, Any]:
        """This PoP's bindings: the shared ones (KV seen through this PoP's view when writes propagate
        with a delay), those bound to the edge (Durable Objects, services, queues, workflows: they call
        other Workers from this PoP), and an AI binding that calls the backend nearest to it."""
        shared = {**script.declared.by_name, **self.bindings}
        if self.kv_propagation.delay_s > 0:
            shared = self.kv_propagation.for_pop_bindings(shared, colo)
        for spec in config.bindings:
            if spec.kind in EDGE_BINDERS and spec.name is not None:
                shared[spec.name] = edge_binder(spec.kind)(spec, self, script, colo)
        if config.ai_binding is None:
            return shared
        return {**shared, config.ai_binding: Ai(self.ai_backends, get_location(colo))}

    def reload(self, config: WorkerConfig | None = None) -> None:
        """Load fresh instances (and vars) of a Worker for every PoP, then swap them in; on failure keep the old.

        ``config``: the Worker's new config (default: the primary's as it is); the Worker it reloads is
        the one of that name. PoPs, ports and routing settings stay as started: changing those needs a restart.
        """
        config = config or self.config
        script = self.script(config.name if config.name in self.scripts else None)
        old = script.declared
        if config.bindings != old.specs:  # declarations changed: open them afresh, over the same data
            script.declared = OpenBindings(config.bindings, self.state)
        try:
            fresh = [(pop.colo, *self._load(script, pop.colo, config)) for pop in self.pops]
        except BaseException:
            if script.declared is not old:
                script.declared.close()
                script.declared = old
            raise
        if script.declared is not old:
            old.close()
            script.declared.announce()
        script.config = config
        if script is self.script():
            self.config = self.services.config = config
        for colo, worker, env in fresh:
            script.set_instance(colo, worker, env)
        for pop in self.pops:
            pop.forget_cached_cf()

    def pop_rtt_s(self, from_colo: str, to_colo: str) -> float:
        """The simulated round trip between two PoPs (0 for the same PoP, or with latency off)."""
        here, there = self.pop(from_colo).location, self.pop(to_colo).location
        return pop_to_pop_rtt_ms(here, there, self.config.edgewise.latency) / 1000.0

    def shared(self, key: str, factory: Callable[[], T]) -> T:
        """One object per edge for the whole run (a Durable Object directory, a queue broker ...).

        Its ``async start()`` runs at ``start()`` (at once if the edge has started); its ``aclose()``
        or ``close()`` at ``aclose()``.
        """
        if key not in self._shared:
            service = self._shared[key] = factory()
            start = getattr(service, "start", None)
            if self.started and start is not None:
                _spawn(start())
        return self._shared[key]

    async def start(self) -> None:
        """Start what runs without requests: alarms, queue consumers, workflows left running at the last stop."""
        if self.started:
            return
        if any(script.config.queue_consumers for script in self.scripts.values()):
            queue_broker(self)  # a Worker that only consumes still gets its batches
        self.started = True  # from here on, a service made later is started as it is made
        for service in list(self._shared.values()):
            start = getattr(service, "start", None)
            if start is not None:
                await start()

    async def invoke(self, script: Script, colo: str, call: Callable[..., Any], *, event: str,
                     detail: dict[str, Any] | None = None, timeout_s: float | None = None) -> Any:
        """``call(worker, env, ctx)`` as an invocation of ``script`` at ``colo`` (edge_runtime/invocation.py)."""
        return await invoke(script, colo, call, self.hub, event=event, detail=detail, timeout_s=timeout_s)

    async def aclose(self) -> None:
        """Close what outlives requests: shared services, the AI backends' connections, the bindings' stores."""
        if self._closed:
            return
        self._closed = True
        for service in reversed(list(self._shared.values())):
            aclose, close = getattr(service, "aclose", None), getattr(service, "close", None)
            try:
                if aclose is not None:
                    await aclose()
                elif close is not None:
                    close()
            except Exception:  # one failing service must not keep the others open
                log.exception("closing %r failed", service)
        self._shared.clear()
        await self.ai_backends.aclose()
        self._close_bindings()

    def _close_bindings(self) -> None:
        for script in self.scripts.values():
            script.declared.close()

    def pop(self, colo: str) -> Pop:
        return next(pop for pop in self.pops if pop.colo == colo.upper())

    @staticmethod
    def describe(pop: Pop) -> dict[str, Any]:
        location = pop.location
        return {"colo": pop.colo, "city": location.city, "country": location.country, "healthy": pop.healthy,
                "port": pop.port, "latitude": location.latitude, "longitude": location.longitude}
