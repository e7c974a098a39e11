"""A PoP: one emulated Cloudflare location running its own instance of the Worker, as an ASGI app."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import traceback
from collections.abc import Callable
from http import HTTPMethod, HTTPStatus
from dataclasses import dataclass, field
from typing import Any

from edgewise_sdk.workers import Context, Headers, Request, Response, _state

from . import http_io
from .bindings.assets import StaticAssets
from .env import Env
from .blocking_io import run_releasing_loop
from .catalog import Location
from .cf import base_cf, new_ray_id, request_cf
from .config import WorkerConfig
from .deadlines import Deadlines, WallTimeExceeded
from .errors import (EdgeError, bad_request, client_disconnected, render, worker_exceeded_limits,
                     worker_exceeded_memory, worker_threw)
from .geo import ClientLocation, ClientLocator, LocationError
from .isolate_memory import MIB, MemoryMeter
from .loader import WorkerLoadError
from .routing import simulated_rtt_ms
from .scripts import Script
from .scheduled import SCHEDULED_PATHS, run_scheduled_endpoint
from .tail import TailHub, exception_entry, request_event
from .websocket_bridge import serve_websocket
from .worker import Worker

log = logging.getLogger("edgewise.edge")
request_log = logging.getLogger("edgewise.requests")

CLIENT_SCOPE_KEY = "edgewise.client"  # set by the front door: the client location it routed on


@dataclass
class EdgeServices:
    """What every PoP of one dev run shares."""

    config: WorkerConfig
    locator: ClientLocator
    hub: TailHub
    load_worker: Callable[[str], tuple[Worker, Env]]  # a fresh instance of the Worker for a colo
    deadlines: Deadlines = field(default_factory=Deadlines)
    _assets: tuple[WorkerConfig, StaticAssets | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._assets = (self.config, StaticAssets.for_config(self.config))  # a missing folder stops the start

    @property
    def assets(self) -> StaticAssets | None:
        """The static assets served ahead of the Worker (None without ``assets``), anew after a reload."""
        if self._assets[0] is not self.config:
            self._assets = (self.config, StaticAssets.for_config(self.config))
        return self._assets[1]


class Pop:
    """Serves requests for one location: builds ``request.cf``, runs the Worker, adds ``CF-Ray``."""

    def __init__(self, location: Location, services: EdgeServices, script: Script,
                 port: int | None = None, healthy: bool = True) -> None:
        self.location = location
        self.colo = location.iata
        self.services = services
        self.script = script  # the Worker it serves; its instance at this PoP is script.instance(colo)
        self.port = port
        self.healthy = healthy
        self._cf_cache: dict[ClientLocation, Any] = {}
        self._background: set[asyncio.Future[Any]] = set()
        self._memory = MemoryMeter()

    @property
    def worker(self) -> Worker:
        return self.script.workers[self.colo]

    @worker.setter
    def worker(self, worker: Worker) -> None:
        self.script.workers[self.colo] = worker

    @property
    def env(self) -> Env:
        return self.script.envs[self.colo]

    @env.setter
    def env(self, env: Env) -> None:
        self.script.envs[self.colo] = env

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _refuse_lifespan(receive, send)
            return
        ray_id = new_ray_id(self.colo)
        if not self.healthy and CLIENT_SCOPE_KEY not in scope:
            await self._send_error(send, scope, EdgeError(503, None, f"PoP {self.colo} is down"), ray_id)
            return
        try:
            client = scope.get(CLIENT_SCOPE_KEY) or self._locate(scope)
        except LocationError as error:
            await self._send_error(send, scope, bad_request(str(error)), ray_id)
            return
        if scope["type"] == "websocket":
            await serve_websocket(self, scope, receive, send, client, ray_id)
        elif scope["path"] in SCHEDULED_PATHS:
            await run_scheduled_endpoint(self, scope, send)
        else:
            await self._serve_http(scope, receive, send, client, ray_id)

    def _locate(self, scope: dict[str, Any]) -> ClientLocation:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        peer = scope.get("client")
        return self.services.locator.locate(headers, peer[0] if peer else None)

    def build_request(self, scope: dict[str, Any], client: ClientLocation, ray_id: str,
                      body: http_io.IncomingBody | None, headers: Headers) -> Request:
        """The Worker's view: Cloudflare's request headers added and ``request.cf`` filled in."""
        peer_ip = scope["client"][0] if scope.get("client") else "127.0.0.1"
        scheme = _http_scheme(scope)
        accept_encoding = headers.get("accept-encoding") or ""
        if "x-real-ip" not in headers:
            headers.put_lower("x-real-ip", peer_ip)
        headers.update_lower({
            "accept-encoding": "br, gzip", "cf-connecting-ip": peer_ip, "cf-ipcountry": client.country or "XX",
            "cf-ray": ray_id, "cf-visitor": '{"scheme":"%s"}' % scheme, "x-forwarded-proto": scheme,
        })
        if scope.get("method", "GET") not in _METHODS:
            raise EdgeError(405, None, "Method Not Allowed",
                            f"{scope['method']} is not an HTTP method a Worker can receive (use one of {sorted(_METHODS)}).")
        base, rtt_ms = self._base_cf(client)
        http_version, blob = scope.get("http_version", "1.1"), headers.get("mf-cf-blob")

        def make_cf() -> Any:
            return request_cf(base, accept_encoding, http_version, rtt_ms, blob)

        return Request._incoming(_url(scope, headers, scheme), scope.get("method", "GET"), headers, body, make_cf)

    def _base_cf(self, client: ClientLocation) -> tuple[Any, float]:
        cached = self._cf_cache.get(client)
        if cached is None:
            edgewise = self.services.config.edgewise
            cached = (base_cf(self.location, client, edgewise.cf),
                      simulated_rtt_ms(self.location, client, edgewise.latency))
            if len(self._cf_cache) < 10_000:  # bounded: client locations come from request headers
                self._cf_cache[client] = cached
        return cached

    def forget_cached_cf(self) -> None:
        self._cf_cache.clear()

    async def _serve_http(self, scope: dict[str, Any], receive: Any, send: Any, client: ClientLocation,
                          ray_id: str) -> None:
        started = time.perf_counter()
        limits = self.services.config.edgewise.limits
        headers = Headers.from_raw(scope["headers"])
        ctx, logs, exceptions = Context(), [], []
        status: int | None = None
        outcome = "ok"
        request = None
        try:
            body = http_io.request_body(headers, receive, limits.max_request_body_bytes)
            request = self.build_request(scope, client, ray_id, body, headers)
            response = await self._serve_asset(request)
            if response is None:
                response = await self.invoke_fetch(request, ctx, ray_id, logs, receive, body)
            if response.status == 101:
                raise worker_threw("TypeError: a 101 response with a WebSocket needs an `Upgrade: websocket` request")
            status = response.status
            await http_io.send_response(send, receive, response, ray_id, scope["method"] == "HEAD", body)
        except EdgeError as error:
            exceptions.append(exception_entry(error))
            status, outcome = error.status, error.outcome
            await self._send_error(send, scope, error, ray_id)
        except Exception as error:
            # Everything before the response is an EdgeError: this is the body stream failing after
            # the headers went out, so the client sees a truncated body and the log says why.
            log.error("Response body stream failed at %s (ray %s): %r", self.colo, ray_id, error)
        finally:
            self.after_invocation(ctx, ray_id)
            if self.services.hub.has_subscribers or request_log.isEnabledFor(logging.INFO):
                self._record(scope, request, status, outcome, logs, exceptions, ray_id, started)

    async def _serve_asset(self, request: Request) -> Response | None:
        """A static asset answers before the Worker, as on Cloudflare (unless ``run_worker_first``); None: run it."""
        assets = self.services.assets
        return None if assets is None else await assets.route(request)

    async def invoke_fetch(self, request: Request, ctx: Context, ray_id: str, logs: list,
                           receive: Any = None, body: http_io.IncomingBody | None = None) -> Response:
        """Run the Worker's fetch within the wall-time limit; every failure becomes an ``EdgeError``.

        With ``receive``, a client that disconnects cancels the invocation (499).
        """
        wall_time_s = self.services.config.edgewise.limits.wall_time_s
        token = self._enter(ctx, logs)
        watch = self.services.deadlines.watch(wall_time_s, receive, body)
        try:
            # Blocking socket calls in the handler (requests.get, ...) wait off the loop: other requests go on.
            response = await run_releasing_loop(self.worker.fetch, request, self.env, ctx)
        except EdgeError:
            raise
        except (asyncio.CancelledError, WallTimeExceeded) as error:
            if not (watch.expired or watch.disconnected):
                raise  # the server is stopping
            if isinstance(error, asyncio.CancelledError):
                asyncio.current_task().uncancel()
            if watch.disconnected:
                raise client_disconnected() from None
            raise worker_exceeded_limits(
                f"The fetch handler did not return a Response within {wall_time_s:g} s "
                "([edgewise.limits] wall_time_s)."
            ) from None
        except Exception as error:
            raise self._worker_error(error, ray_id) from error
        finally:
            self.services.deadlines.unwatch(watch)
            self._exit(token)
        self._enforce_memory_limit()
        if not isinstance(response, Response):
            raise worker_threw(
                "TypeError: Incorrect type for Promise: the Promise did not resolve to 'Response' "
                f"(fetch returned {type(response).__name__}; return workers.Response(...))."
            )
        return response

    def _enforce_memory_limit(self) -> None:
        """Past ``memory_mb``, this PoP's Worker is replaced by a fresh import and the invocation fails (1102)."""
        retained = self._memory.retained_if_due(self.worker.module, self.worker.local_module_names, (self.env,))
        limit_mb = self.services.config.edgewise.limits.memory_mb
        if retained is None or retained <= limit_mb * MIB:
            return
        detail = (f"The Worker at {self.colo} retains about {retained / MIB:.0f} MB, over its {limit_mb:g} MB limit "
                  "([edgewise.limits] memory_mb)")
        try:
            self.worker, self.env = self.services.load_worker(self.colo)
            log.error("%s: this PoP's instance was stopped and a fresh one loaded.", detail)
        except WorkerLoadError as error:
            log.error("%s, and loading a fresh one failed; the next request tries again.\n%s", detail, error)
        raise worker_exceeded_memory(detail + ".")

    def _enter(self, ctx: Context, logs: list) -> contextvars.Token:
        budget = _state.SubrequestBudget(self.services.config.edgewise.limits.max_subrequests)
        return _state.current.set(_state.Invocation(self.env, ctx, budget, logs))

    @staticmethod
    def _exit(token: contextvars.Token) -> None:
        _state.current.reset(token)

    def _worker_error(self, error: Exception, ray_id: str) -> EdgeError:
        detail = "".join(traceback.format_exception(error)).rstrip()
        log.error("Uncaught exception in the Worker at %s (ray %s)\n%s", self.colo, ray_id, detail)
        return worker_threw(detail)

    def after_invocation(self, ctx: Context, ray_id: str) -> None:
        """``waitUntil`` work runs on after the response, up to its own bound."""
        if ctx._tasks:
            wait_s = self.services.config.edgewise.limits.wait_until_s
            task = asyncio.ensure_future(ctx.drain(wait_s, f"(colo {self.colo}, ray {ray_id})"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def deny_websocket(self, send: Any, scope: dict[str, Any], response: Response, ray_id: str) -> None:
        """The Worker answered an upgrade with an ordinary response (say 426): pass it on as the refusal."""
        body = b"" if response._body is None else await response.bytes()
        content_type = response.headers.get("content-type") or "text/plain;charset=UTF-8"
        await http_io.send_websocket_denial(send, scope, response.status, body, content_type, ray_id)

    async def _send_error(self, send: Any, scope: dict[str, Any], error: EdgeError, ray_id: str) -> None:
        accept = next((value for name, value in scope.get("headers", ()) if name == b"accept"), b"")
        body, content_type = render(error, ray_id, b"text/html" in accept)
        if scope["type"] == "websocket":
            await http_io.send_websocket_denial(send, scope, error.status, body, content_type, ray_id)
            return
        await http_io.send_plain(send, error.status, body, content_type, [(b"cf-ray", ray_id.encode())])

    def _record(self, scope: dict[str, Any], request: Request | None, status: int | None, outcome: str,
                logs: list, exceptions: list, ray_id: str, started: float) -> None:
        duration_ms = (time.perf_counter() - started) * 1000
        if request_log.isEnabledFor(logging.INFO):
            request_log.info("%s %s %s %s (%.0fms) %s", scope.get("method"), scope["path"], status,
                             _REASONS.get(status, ""), duration_ms, ray_id)
        hub = self.services.hub
        if hub.has_subscribers:
            summary = {"url": request.url if request else scope["path"], "method": scope.get("method"),
                       "headers": dict(request.headers) if request else {}, "cf": dict(request.cf or {}) if request else {}}
            hub.publish(request_event(self.services.config.name, outcome, summary, status, logs, exceptions,
                                      self.colo, ray_id, duration_ms))


def _http_scheme(scope: dict[str, Any]) -> str:
    scheme = scope.get("scheme", "http")
    return _HTTP_SCHEMES.get(scheme, scheme)


_HTTP_SCHEMES = {"ws": "http", "wss": "https"}
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_METHODS = frozenset(method.value for method in HTTPMethod)


def _url(scope: dict[str, Any], headers: Headers, scheme: str) -> str:
    host = headers.get("host") or "localhost"
    query = scope.get("query_string", b"")
    path = scope.get("raw_path") or scope["path"].encode()
    target = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    return f"{scheme}://{host}{target}"


async def _refuse_lifespan(receive: Any, send: Any) -> None:
    message = await receive()
    if message["type"] == "lifespan.startup":
        await send({"type": "lifespan.startup.complete"})
