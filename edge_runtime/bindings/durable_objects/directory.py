"""The edge's Durable Objects: one live instance per (class, id) across all PoPs, and the path of every event to it.

An event (a stub's fetch or RPC call, an alarm, a hibernated WebSocket's message) is delivered by
``deliver``: find the object's home PoP (``placement.py``), pay the simulated round trip from the
caller's PoP, then run it as an invocation of the class's Worker at the home PoP (``Edge.invoke``:
env, limits, logs, a tail event naming the object), after the object's input gate (``state.py``).
Instances are built on their first event with the home PoP's env, and dropped when idle (hibernation);
their storage, sockets and alarms stay with the directory.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...config import ConfigError
from .alarms import AlarmScheduler
from .ids import DurableObjectId
from .migrations import ClassMigrations, DurableObjectConfigError, ObjectClass
from .placement import Placement, PlacementIndex
from .state import DurableObjectState, InputGate
from .storage import DurableObjectStorage, StorageLimits
from .websockets import ObjectSockets

if TYPE_CHECKING:
    from ...edge import Edge
    from ...scripts import Script

log = logging.getLogger("edgewise.durable_objects")
EVENT = "durable_object"  # the tail event type of every delivered call
DIRECTORY_KEY = "durable_objects"  # the directory's key in Edge.shared


@dataclass(frozen=True)
class DirectorySettings:
    """How the directory runs objects; Cloudflare's values by default, shorter in tests."""

    alarm_retry_base_s: float = 2.0  # first retry of a failed alarm(); doubles each time
    alarm_max_retries: int = 6
    block_concurrency_timeout_s: float = 30.0
    hibernate_after_s: float = 10.0  # idle object whose only connections are hibernatable WebSockets
    evict_after_s: float = 70.0  # any other idle object
    sweep_every_s: float = 1.0


@dataclass(frozen=True)
class ObjectTarget:
    """One object: its class (namespace) and id."""

    object_class: ObjectClass
    object_id: DurableObjectId

    @property
    def key(self) -> tuple[str, str]:
        return self.object_class.namespace_key, self.object_id.toString()


@dataclass(eq=False)
class LiveObject:
    target: ObjectTarget
    home: str
    cls: type
    gate: InputGate = field(default_factory=InputGate)
    instance: Any = None
    in_flight: int = 0
    last_event_s: float = field(default_factory=time.monotonic)


class ObjectDirectory:
    """Shared by every Worker and PoP of the edge (``edge.shared("durable_objects", ...)``)."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.settings = DirectorySettings()
        self.placement = Placement([edge.pop(colo).location for colo in edge.colos])
        self.alarms = AlarmScheduler(self)
        self.live: dict[tuple[str, str], LiveObject] = {}
        self._classes: dict[tuple[str, str], ObjectClass] = {}  # (Worker, class) -> its namespace
        self._migrations: dict[str, ClassMigrations] = {}
        self._checked_scripts: set[str] = set()
        self._indexes: dict[str, PlacementIndex] = {}
        self._storages: dict[tuple[str, str], Any] = {}
        self._sockets: dict[tuple[str, str], ObjectSockets] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # -- namespaces -------------------------------------------------------------------------------
    def register(self, class_name: str, script_name: str | None, binder: Script) -> ObjectClass:
        """The namespace of a binding's class (of ``script_name``'s Worker, or the binding's own)."""
        try:
            owner = self.edge.script(script_name) if script_name else binder
        except LookupError as error:
            raise DurableObjectConfigError(f"a durable_objects binding of Worker {binder.name!r} names "
                                           f"script_name {script_name!r}: {error}") from None
        key = (owner.name, class_name)
        if key not in self._classes:
            object_class = self._classes[key] = self._migrations_of(owner).object_class(owner.name, class_name)
            folder = self.edge.state.folder("do", object_class.namespace_key)
            self._indexes.setdefault(object_class.namespace_key, PlacementIndex(folder))
        return self._classes[key]

    def _migrations_of(self, script: Script) -> ClassMigrations:
        if script.name not in self._migrations:
            try:
                migrations = ClassMigrations.replay(script.config.migrations)
            except ConfigError as error:
                raise error.with_file(script.config.file) from None
            for storage_name in migrations.deleted_storage:  # deleted_classes: their data goes too
                shutil.rmtree(self.edge.state.root / "do" / f"{script.name}-{storage_name}", ignore_errors=True)
            self._migrations[script.name] = migrations
        return self._migrations[script.name]

    def check_classes(self, script: Script) -> None:
        """Every class the Worker's migrations keep must exist in its module: a start error otherwise."""
        if script.name in self._checked_scripts:
            return
        colo = self.edge.colos[0]
        for class_name, (_, tag, _) in self._migrations_of(script).live.items():
            try:
                script.find_class(colo, class_name)
            except LookupError:
                raise DurableObjectConfigError(
                    f'migrations tag "{tag}" of Worker "{script.name}" declares Durable Object class "{class_name}", '
                    f"but {script.config.main.name} defines no class {class_name!r}: define it, or add a migration "
                    f"that renames or deletes it") from None
        self._checked_scripts.add(script.name)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        for script in self.edge.scripts.values():
            if script.config.migrations:
                self.check_classes(script)
        for object_class in list(self._classes.values()):
            for placed in self._indexes[object_class.namespace_key].objects():
                if placed.alarm_at_s is not None:  # set before the last stop: it still fires
                    object_id = DurableObjectId(placed.object_id, placed.name)
                    self.alarms.schedule(ObjectTarget(object_class, object_id), placed.alarm_at_s)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self.alarms.aclose()
        for sockets in self._sockets.values():
            await sockets.aclose()
        self.live.clear()
        for storage in self._storages.values():
            storage.close()
        for index in self._indexes.values():
            index.close()
        self._storages.clear()
        self._indexes.clear()

    # -- delivery ---------------------------------------------------------------------------------
    async def deliver(self, target: ObjectTarget, caller_colo: str | None, hint: str | None, handler: str,
                      run: Callable[[Any], Awaitable[Any]], timeout_s: float | None = None) -> Any:
        """``run(instance)`` at the object's home, after the round trip from ``caller_colo`` (None: at home),
        within ``timeout_s`` (default: the Worker's wall-time limit)."""
        object_class = target.object_class
        script = self.edge.script(object_class.script_name)
        self.check_classes(script)
        home = self.home_of(target, caller_colo, hint)
        if caller_colo is not None and caller_colo != home:
            delay_s = self.edge.pop_rtt_s(caller_colo, home)
            if delay_s > 0:
                await asyncio.sleep(delay_s)
        detail = {"entrypoint": object_class.class_name, "handler": handler,
                  "objectId": target.object_id.toString(), "home": home, "callerColo": caller_colo or home}
        if target.object_id.name is not None:
            detail["objectName"] = target.object_id.name

        async def call(worker: Any, env: Any, ctx: Any) -> Any:
            live = self._live(target, home, script)
            if not live.gate.is_open:
                await live.gate.passed()
            live.in_flight += 1
            try:
                return await run(live.instance)
            finally:
                live.in_flight -= 1
                live.last_event_s = time.monotonic()

        return await self.edge.invoke(script, home, call, event=EVENT, detail=detail, timeout_s=timeout_s)

    def home_of(self, target: ObjectTarget, caller_colo: str | None, hint: str | None) -> str:
        index = self._indexes[target.object_class.namespace_key]
        object_id = target.object_id.toString()
        home = index.home(object_id)
        if home is None or home not in self.edge.colos:  # first call, or its PoP is gone from the config
            home = self.placement.home_for(caller_colo or self.edge.colos[0], hint)
            index.place(object_id, target.object_id.name, home)
        return home

    def _live(self, target: ObjectTarget, home: str, script: Script) -> LiveObject:
        cls = script.find_class(home, target.object_class.class_name)
        live = self.live.get(target.key)
        if live is not None and live.cls is cls:
            return live
        if live is not None:  # the Worker was reloaded: the object restarts on the new code
            self.discard(live)
        live = LiveObject(target, home, cls)
        _, env = script.instance(home)
        state = DurableObjectState(live, self, target.object_id, self.storage(target), self.sockets(target))
        instance = cls.__new__(cls)
        instance.ctx, instance.env = state, env  # set before __init__: user code may skip super().__init__
        instance.__init__(state, env)
        instance.ctx, instance.env = state, env
        live.instance = instance
        self.live[target.key] = live
        return live

    def discard(self, live: LiveObject) -> None:
        """Drop a live instance (abort, reset, hibernation); its next event builds a fresh one."""
        if self.live.get(live.target.key) is live:
            del self.live[live.target.key]

    def storage(self, target: ObjectTarget) -> Any:
        storage = self._storages.get(target.key)
        if storage is None:
            namespace_key, object_id = target.key
            path = self.edge.state.folder("do", namespace_key) / f"{object_id}.sqlite"
            sqlite_backed = target.object_class.sqlite_backed
            limits = StorageLimits() if sqlite_backed else StorageLimits.key_value_backed()
            storage = DurableObjectStorage(path, on_alarm_change=lambda _: self.alarms.changed(target), limits=limits,
                                           sqlite_backed=sqlite_backed)
            self._storages[target.key] = storage
        return storage

    def sockets(self, target: ObjectTarget) -> ObjectSockets:
        sockets = self._sockets.get(target.key)
        if sockets is None:
            sockets = self._sockets[target.key] = ObjectSockets(self, target)
        return sockets

    def record_alarm(self, target: ObjectTarget, alarm_at_s: float | None) -> None:
        self._indexes[target.object_class.namespace_key].set_alarm(target.object_id.toString(), alarm_at_s)

    # -- idle objects -----------------------------------------------------------------------------
    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_every_s)
            self.evict_idle()

    def evict_idle(self) -> None:
        now = time.monotonic()
        for live in list(self.live.values()):
            sockets = self._sockets.get(live.target.key)
            idle_s = self.settings.hibernate_after_s if sockets and sockets.has_open else self.settings.evict_after_s
            if live.in_flight == 0 and live.gate.is_open and now - live.last_event_s >= idle_s:
                self.discard(live)

    # -- the objects route ------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        """Every object the edge knows: where it lives, whether it is in memory, its open WebSockets."""
        objects, seen = [], set()
        for object_class in self._classes.values():
            namespace_key = object_class.namespace_key
            if namespace_key in seen:  # a class and its old name, both bound
                continue
            seen.add(namespace_key)
            for placed in self._indexes[namespace_key].objects():
                key = (namespace_key, placed.object_id)
                sockets = self._sockets.get(key)
                entry = {"namespace": namespace_key, "script": object_class.script_name,
                         "class": object_class.class_name, "id": placed.object_id, "home": placed.home,
                         "live": key in self.live, "websockets": len(sockets.open_sockets()) if sockets else 0}
                if placed.name is not None:
                    entry["name"] = placed.name
                objects.append(entry)
        return objects


def directory_of(edge: Edge) -> ObjectDirectory:
    return edge.shared(DIRECTORY_KEY, lambda: ObjectDirectory(edge))


def describe_objects(edge: Edge) -> list[dict[str, Any]]:
    """``GET /cdn-cgi/edgewise/objects``: the edge's objects (none where no Worker binds a Durable Object)."""
    binds = any(spec.kind == "durable_objects" for script in edge.scripts.values() for spec in script.config.bindings)
    return directory_of(edge).describe() if binds else []
