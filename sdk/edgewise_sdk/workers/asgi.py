"""``workers.asgi``: serve an ASGI 3 app (Starlette, FastAPI) as a Worker, one request per call.

Every request runs a full lifespan cycle (startup, the request, shutdown), as on Cloudflare, where an
isolate may serve a single request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import ASGIApp, Message, Scope

from . import _state
from ._asgi_websocket import WebSocketSession, header_pairs, settle
from .entrypoint import WorkerEntrypoint
from .headers import Headers
from .request import Request
from .response import Response

__all__ = ["Options", "entrypoint", "env", "fetch", "websocket"]

log = logging.getLogger("edgewise.worker")

ASGI_VERSION = {"spec_version": "2.0", "version": "3.0"}
NULL_BODY_STATUSES = frozenset({101, 103, 204, 205, 304})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_BUFFERED_CHUNKS = 16  # backpressure: the app waits when the reader is this far behind

_background: set[asyncio.Task[Any]] = set()


@dataclass(frozen=True)
class Options:
    """``encode_body``: "automatic" lets the runtime compress; "manual" means the app already did (stored only)."""

    encode_body: Literal["automatic", "manual"] = "automatic"

    def __post_init__(self) -> None:
        if self.encode_body not in ("automatic", "manual"):
            raise ValueError(f"Options.encode_body must be 'automatic' or 'manual', not {self.encode_body!r}")


async def fetch(app: ASGIApp, request: Request, env: Any, ctx: Any = None, *, options: Options | None = None) -> Response:
    """Serve ``request`` with ``app``; a streamed body keeps the app (and lifespan shutdown) running after return."""
    lifespan = _Lifespan(app)
    await lifespan.startup()
    exchange = _HttpExchange(request)
    task = asyncio.create_task(exchange.run(app, _scope(request, env, "http", lifespan.state)))
    try:
        response = await exchange.response
        if not exchange.is_streaming:
            await task
    except BaseException:
        task.cancel()  # no-op once the app has returned
        await lifespan.shutdown()
        raise
    if exchange.is_streaming:
        _keep_alive(ctx, _finish_streaming(task, lifespan))
    else:
        await lifespan.shutdown()
    return response


async def websocket(app: ASGIApp, request: Request, env: Any = None) -> Response:
    """Bridge an ASGI websocket to a ``WebSocketPair``; returns the 101 (or 403 if the app refuses)."""
    session = WebSocketSession()
    task = asyncio.create_task(session.run(app, _scope(request, env, "websocket")))
    _background.add(task)
    task.add_done_callback(_background.discard)
    try:
        return await session.handshake
    except asyncio.CancelledError:
        task.cancel()
        raise


def entrypoint(app: ASGIApp, *, options: Options | None = None) -> type[WorkerEntrypoint]:
    """``Default = asgi.entrypoint(app)``: a Worker class serving ``app`` (websocket upgrades included)."""

    class Default(WorkerEntrypoint):
        async def fetch(self, request: Request) -> Response:
            if (request.headers.get("upgrade") or "").lower() == "websocket":
                return await websocket(app, request, self.env)
            return await fetch(app, request, self.env, self.ctx, options=options)

    Default.__qualname__ = "Default"
    return Default


def _scope(request: Request, env: Any, kind: str, state: dict[str, Any] | None = None) -> Scope:
    url = urlsplit(request.url)
    scheme = url.scheme if kind == "http" else {"http": "ws", "https": "wss"}.get(url.scheme, url.scheme)
    scope: Scope = {
        "type": kind,
        "asgi": ASGI_VERSION,
        "http_version": "1.1",
        "scheme": scheme,
        "server": (url.hostname or "", url.port or DEFAULT_PORTS.get(scheme, 80)),
        "client": _client(request.headers),
        "path": unquote(url.path),
        "raw_path": url.path.encode(),
        "root_path": "",
        "query_string": url.query.encode(),
        "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers.raw_items()],
        "env": env,
    }
    if kind == "http":
        scope["method"] = str(request.method).upper()
    else:
        protocols = request.headers.get("sec-websocket-protocol") or ""
        scope["subprotocols"] = [name.strip() for name in protocols.split(",") if name.strip()]
    if state is not None:
        scope["state"] = dict(state)  # the spec asks for a shallow copy per request
    return scope


def _client(headers: Headers) -> tuple[str, int] | None:
    address = headers.get("cf-connecting-ip")
    return (address, 0) if address else None


class _Lifespan:
    """One startup/shutdown cycle of the app's lifespan protocol; apps without one are served anyway."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._started: asyncio.Future[bool] = loop.create_future()  # False: no lifespan support
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._is_supported = False

    async def startup(self) -> None:
        """Raises ``RuntimeError`` when the app reports ``lifespan.startup.failed``."""
        task = asyncio.create_task(self._run())
        _background.add(task)
        task.add_done_callback(_background.discard)
        self._inbox.put_nowait({"type": "lifespan.startup"})
        self._is_supported = await self._started

    async def shutdown(self) -> None:
        if not self._is_supported:
            return
        self._inbox.put_nowait({"type": "lifespan.shutdown"})
        await self._stopped

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            settle(self._started, True)
        elif kind == "lifespan.startup.failed":
            if not self._started.done():
                self._started.set_exception(RuntimeError(message.get("message") or "ASGI lifespan startup failed"))
        elif kind == "lifespan.shutdown.complete":
            settle(self._stopped, None)
        elif kind == "lifespan.shutdown.failed":
            log.error("ASGI lifespan shutdown failed: %s", message.get("message") or "(no message)")
            settle(self._stopped, None)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self._app(scope, self._receive, self._send)
        except Exception:
            # Raising before the startup reply is how an app says it has no lifespan support.
            if not self._started.done():
                log.debug("ASGI app raised on the lifespan scope; serving it without lifespan", exc_info=True)
            elif self._started.exception() is None:
                log.exception("ASGI lifespan failed during shutdown")
        finally:
            settle(self._started, False)
            settle(self._stopped, None)


class _HttpExchange:
    """One request/response with the app: ``receive`` feeds the body in, ``send`` builds the Response."""

    def __init__(self, request: Request) -> None:
        body = request.body
        self._request_chunks = aiter(body) if body is not None else None
        self._request_complete = False
        self._receive_lock = asyncio.Lock()
        self._finished = asyncio.Event()  # response complete, or its reader went away
        self.response: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._start: Message | None = None
        self._chunks: MemoryObjectSendStream[bytes] | None = None

    @property
    def is_streaming(self) -> bool:
        return self._chunks is not None

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self.receive, self.send)
        except Exception as error:
            if not self.response.done():
                self.response.set_exception(error)
            else:
                log.exception("ASGI application failed after its response started")
        else:
            if not self.response.done():
                self.response.set_exception(RuntimeError("The application did not generate a response"))
        finally:
            if not self.response.done():
                self.response.cancel()
            self._end_response()

    async def receive(self) -> Message:
        async with self._receive_lock:
            if not self._request_complete:
                chunk = await anext(self._request_chunks, None) if self._request_chunks is not None else None
                if chunk is not None:
                    return {"type": "http.request", "body": chunk, "more_body": True}
                self._request_complete = True
                return {"type": "http.request", "body": b"", "more_body": False}
        # Starlette listens for the disconnect while it streams, so this must block until the end.
        await self._finished.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self._start is not None:
                raise RuntimeError("http.response.start sent twice")
            self._start = message
        elif message["type"] == "http.response.body":
            if self._start is None:
                raise RuntimeError("http.response.body sent before http.response.start")
            await self._send_body(bytes(message.get("body", b"")), bool(message.get("more_body", False)))

    async def _send_body(self, body: bytes, more_body: bool) -> None:
        if self._chunks is not None:
            await self._stream(body)
        elif not self.response.done():
            self._respond(body, more_body)
        if not more_body:
            self._end_response()

    def _respond(self, body: bytes, more_body: bool) -> None:
        status, headers = int(self._start["status"]), header_pairs(self._start.get("headers", []))
        if status in NULL_BODY_STATUSES:
            self.response.set_result(Response._from_parts(status, Headers(headers), None))
        elif more_body:
            self._chunks, reader = anyio.create_memory_object_stream[bytes](MAX_BUFFERED_CHUNKS)
            self._chunks.send_nowait(body)
            self.response.set_result(Response(self._relay(reader), status=status, headers=headers))
        else:
            self.response.set_result(Response(body, status=status, headers=headers))

    async def _stream(self, chunk: bytes) -> None:
        try:
            await self._chunks.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._finished.set()  # the reader is gone: drop the chunk, report a disconnect

    async def _relay(self, reader: MemoryObjectReceiveStream[bytes]) -> AsyncIterator[bytes]:
        try:
            async with reader:
                async for chunk in reader:
                    yield chunk
        finally:
            self._finished.set()

    def _end_response(self) -> None:
        if self._chunks is not None:
            self._chunks.close()
        self._finished.set()


async def _finish_streaming(task: asyncio.Task[None], lifespan: _Lifespan) -> None:
    try:
        await task
    finally:
        await lifespan.shutdown()


def _keep_alive(ctx: Any, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` past the response: through ``ctx.waitUntil`` when there is a context."""
    ctx = ctx if ctx is not None else _state.ctx()
    if ctx is not None:
        ctx.waitUntil(work)
        return
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _scope_env(request: Any) -> Any:
    return request.scope["env"]


def __getattr__(name: str) -> Any:
    # `env` is built on first use, so that `import asgi` does not import FastAPI.
    if name == "env":
        return _env_dependency()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _env_dependency() -> Any:
    """``async def route(env=asgi.env)``: a FastAPI dependency giving ``request.scope["env"]``."""
    try:
        from fastapi import Depends
        from starlette.requests import Request as StarletteRequest
    except ImportError:
        return _scope_env
    # A class, not a string: FastAPI resolves string annotations in module globals, where this name is not.
    _scope_env.__annotations__["request"] = StarletteRequest
    return Depends(_scope_env)
