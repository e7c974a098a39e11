"""Service bindings (``services``): ``env.SVC.fetch(...)`` and RPC to another Worker of the edge.

The callee runs at the caller's PoP, as a service binding call stays on the same machine on
Cloudflare. ``entrypoint`` names a ``WorkerEntrypoint`` class of the callee's module; without it the
callee's ``Default`` class (or top-level ``on_fetch``) answers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edgewise_sdk.workers import Context, Request, Response, WorkerEntrypoint

from ..config import BindingSpec
from ..config_values import expect_str
from ..rpc import call_method

if TYPE_CHECKING:
    from ..edge import Edge
    from ..env import Env
    from ..scripts import Script
    from ..worker import Worker

log = logging.getLogger("edgewise.bindings")


def bind(spec: BindingSpec, edge: Edge, script: Script, colo: str) -> ServiceBinding:
    service = expect_str(spec.settings.get("service"), f"services[{spec.name}].service")
    entrypoint = spec.settings.get("entrypoint")
    if entrypoint is not None:
        entrypoint = expect_str(entrypoint, f"services[{spec.name}].entrypoint")
    if service not in edge.scripts:
        warned = edge.shared("services.warned", set)
        if (script.name, spec.name) not in warned:
            warned.add((script.name, spec.name))
            log.warning("env.%s is bound to Worker %r, which does not run in this dev session: calls to it fail. "
                        "Give its config too: edgewise dev -c %s -c path/to/%s/wrangler.jsonc",
                        spec.name, service, script.config.file.name, service)
    return ServiceBinding(edge, service, entrypoint, colo, spec.name or service)


class ServiceBinding:
    """``Fetcher``: ``await env.SVC.fetch(url_or_request, **init)``, and ``await env.SVC.method(*args)``."""

    def __init__(self, edge: Edge, service: str, entrypoint: str | None, colo: str, name: str) -> None:
        self._edge, self._service, self._entrypoint, self._colo, self._name = edge, service, entrypoint, colo, name

    async def fetch(self, input: str | Request, **init: Any) -> Response:  # noqa: A002 - the Fetch API's name
        request = input if isinstance(input, Request) and not init else Request(input, **init)
        script = self._target()

        def call(worker: Worker, env: Env, ctx: Context) -> Any:
            if self._entrypoint is None:
                return worker.fetch(request, env, ctx)
            return self._instance(script, worker, env, ctx).fetch(request)

        response = await self._edge.invoke(script, self._colo, call, event="fetch",
                                           detail=self._detail(request.method + " " + request.url))
        if not isinstance(response, Response):
            raise TypeError(f"env.{self._name}.fetch(): Worker {self._service!r} returned "
                            f"{type(response).__name__}, not a Response")
        return response

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        async def rpc(*args: Any, **kwargs: Any) -> Any:
            script = self._target()

            def call(worker: Worker, env: Env, ctx: Context) -> Any:
                return call_method(self._instance(script, worker, env, ctx), method, args, kwargs)

            return await self._edge.invoke(script, self._colo, call, event="rpc", detail=self._detail(method))

        rpc.__name__ = method
        return rpc

    def _target(self) -> Script:
        try:
            return self._edge.script(self._service)
        except LookupError as error:
            raise RuntimeError(f"env.{self._name}: {error}") from None

    def _instance(self, script: Script, worker: Worker, env: Env, ctx: Context) -> WorkerEntrypoint:
        """A new instance of the entrypoint class per call, as workerd makes one per invocation."""
        if self._entrypoint is None:
            cls = worker.entrypoint
            if cls is None:
                raise TypeError(f"Worker {self._service!r} has no `class Default(WorkerEntrypoint)` to take RPC calls "
                                f"(env.{self._name}); define one, with the methods to call as its public methods")
        else:
            cls = script.find_class(self._colo, self._entrypoint)
            if not issubclass(cls, WorkerEntrypoint):
                raise TypeError(f"entrypoint {self._entrypoint!r} of Worker {self._service!r} is not a "
                                "WorkerEntrypoint subclass")
        instance = cls(ctx, env)
        instance.ctx, instance.env = ctx, env
        return instance

    def _detail(self, what: str) -> dict[str, Any]:
        return {"service": self._service, "entrypoint": self._entrypoint or "Default", "call": what}

    def __repr__(self) -> str:
        return f"<service binding to {self._service}{'.' + self._entrypoint if self._entrypoint else ''}>"
