"""``durable_objects`` bindings: a namespace per bound class, and stubs that call its objects.

``env.COUNTER`` is a ``DurableObjectNamespace``: ``idFromName`` / ``idFromString`` / ``newUniqueId`` make
ids (``ids.py``), ``get(id)`` / ``getByName(name)`` make stubs, and a stub's ``fetch`` and public methods
reach the one live instance of that object, wherever it lives (``directory.py``). A namespace is bound
per PoP: calls start from there, so an object living elsewhere costs the simulated round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgewise_sdk.pyodide.ffi import JsException
from edgewise_sdk.workers import Request, Response

from ...config import BindingSpec, ConfigError
from ...rpc import call_method
from .directory import ObjectDirectory, ObjectTarget, directory_of
from .ids import (
    DurableObjectId,
    check_owned,
    checked_jurisdiction,
    id_from_name,
    id_from_string,
    new_unique_id,
)
from .migrations import ObjectClass

if TYPE_CHECKING:
    from ...edge import Edge
    from ...scripts import Script

__all__ = ["DurableObjectId", "DurableObjectNamespace", "DurableObjectStub", "bind"]


def bind(spec: BindingSpec, edge: Edge, script: Script, colo: str) -> DurableObjectNamespace:
    directory = directory_of(edge)
    object_class = directory.register(_class_name(spec), spec.settings.get("script_name"), script)
    return DurableObjectNamespace(directory, object_class, colo.upper())


def _class_name(spec: BindingSpec) -> str:
    class_name = spec.settings.get("class_name")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise ConfigError(None, f"durable_objects.bindings[{spec.name}].class_name",
                          f'must name the Durable Object\'s Python class, like "Counter", got {class_name!r}')
    return class_name


class DurableObjectNamespace:
    """``env.<binding>``; ``jurisdiction("eu")`` gives a view whose new ids are made in that jurisdiction."""

    def __init__(self, directory: ObjectDirectory, object_class: ObjectClass, caller_colo: str,
                 jurisdiction: str | None = None) -> None:
        self._directory, self._class = directory, object_class
        self._caller_colo, self._jurisdiction = caller_colo, jurisdiction

    def idFromName(self, name: str) -> DurableObjectId:  # noqa: N802 - Cloudflare's name
        return id_from_name(self._class, name, self._jurisdiction)

    def idFromString(self, hex_id: str) -> DurableObjectId:  # noqa: N802 - Cloudflare's name
        return id_from_string(self._class, hex_id)

    def newUniqueId(self, options: Mapping[str, Any] | None = None, *,  # noqa: N802 - Cloudflare's name
                    jurisdiction: str | None = None) -> DurableObjectId:
        if options is not None:
            jurisdiction = dict(options).get("jurisdiction", jurisdiction)
        jurisdiction = self._jurisdiction if jurisdiction is None else checked_jurisdiction(jurisdiction)
        return new_unique_id(self._class, jurisdiction)

    def get(self, object_id: DurableObjectId, options: Mapping[str, Any] | None = None, *,
            locationHint: str | None = None) -> DurableObjectStub:  # noqa: N803 - Cloudflare's name
        if not isinstance(object_id, DurableObjectId):
            raise TypeError("get() needs a DurableObjectId (from idFromName, idFromString or newUniqueId), "
                            f"got {type(object_id).__name__}")
        if options is not None:
            locationHint = dict(options).get("locationHint", locationHint)  # noqa: N806
        if locationHint is not None:
            self._directory.placement.check_hint(locationHint)
        check_owned(self._class, object_id.toString())
        return DurableObjectStub(self._directory, ObjectTarget(self._class, object_id), self._caller_colo,
                                 locationHint)

    def getByName(self, name: str, options: Mapping[str, Any] | None = None, *,  # noqa: N802
                  locationHint: str | None = None) -> DurableObjectStub:  # noqa: N803 - Cloudflare's name
        return self.get(self.idFromName(name), options, locationHint=locationHint)

    def jurisdiction(self, jurisdiction: str) -> DurableObjectNamespace:
        return DurableObjectNamespace(self._directory, self._class, self._caller_colo,
                                      checked_jurisdiction(jurisdiction))

    def __repr__(self) -> str:
        return f"<DurableObjectNamespace {self._class.class_name} of {self._class.script_name} at {self._caller_colo}>"


class _RpcMethod:
    """``stub.name``: calling it is an RPC call of the object's public method ``name``."""

    __slots__ = ("_stub", "_name")

    def __init__(self, stub: DurableObjectStub, name: str) -> None:
        self._stub, self._name = stub, name

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._name
        return await self._stub._deliver(name, lambda instance: call_method(instance, name, args, kwargs))


class DurableObjectStub:
    """One object: ``await stub.fetch(request)`` and ``await stub.method(*args)`` (RPC); ``id`` and ``name``."""

    def __init__(self, directory: ObjectDirectory, target: ObjectTarget, caller_colo: str,
                 location_hint: str | None) -> None:
        self._directory, self._target = directory, target
        self._caller_colo, self._location_hint = caller_colo, location_hint
        self.id = target.object_id

    @property
    def name(self) -> str | None:
        return self.id.name

    async def fetch(self, input: str | Request, **init: Any) -> Response:
        request = input if isinstance(input, Request) and not init else Request(input, **init)
        return await self._deliver("fetch", lambda instance: _call_fetch(instance, request))

    async def _deliver(self, handler: str, run: Any) -> Any:
        return await self._directory.deliver(self._target, self._caller_colo, self._location_hint, handler, run)

    def __getattr__(self, name: str) -> _RpcMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _RpcMethod(self, name)

    def __repr__(self) -> str:
        return f"<DurableObjectStub {self._target.object_class.class_name} {self.id}>"


async def _call_fetch(instance: Any, request: Request) -> Response:
    fetch = getattr(instance, "fetch", None)
    if fetch is None:
        raise TypeError(f"The Durable Object class {type(instance).__name__} has no fetch() method: define "
                        "`async def fetch(self, request)`, or call its methods over RPC instead")
    try:
        response = fetch(request)
        if hasattr(response, "__await__"):
            response = await response
    except JsException:
        raise
    except Exception as error:  # the object's error reaches the caller with its message, as over RPC
        raise JsException(f"{type(error).__name__}: {error}", name="Error") from error
    if not isinstance(response, Response):
        raise TypeError(f"{type(instance).__name__}.fetch() returned {type(response).__name__}: a Durable "
                        "Object's fetch must return a workers.Response")
    return response
