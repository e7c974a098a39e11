"""``workers.wsgi``: serve a PEP 3333 app (Flask, Django) as a Worker, the app running in a worker thread."""

from __future__ import annotations

import asyncio
import contextvars
import io
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from .entrypoint import WorkerEntrypoint
from .request import Request
from .response import NULL_BODY_STATUSES, Response

__all__ = ["entrypoint", "fetch", "host_loop"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
DEFAULT_PORTS = {"http": "80", "https": "443"}

# The loop serving the request, seen from the app's thread: `pyodide.ffi.run_sync` hands awaitables to it.
host_loop: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "workers_wsgi_host_loop", default=None
)


async def fetch(app: WSGIApp, request: Request, env: Any, ctx: Any = None) -> Response:
    """Serve ``request`` with ``app``; a body that is not a list is streamed chunk by chunk from the thread."""
    body = await request.bytes() if request.body is not None else b""
    started = await _in_thread(_start, app, _environ(request, env, body))
    status, _, status_text = started.status.partition(" ")
    if int(status) in NULL_BODY_STATUSES:
        await _in_thread(_close, started.result)
        content = None
    elif started.chunks is not None:
        content = _drain(started)
    else:
        content = b"".join(started.first)
    return Response(content, status=int(status), status_text=status_text, headers=started.headers)


def entrypoint(app: WSGIApp) -> type[WorkerEntrypoint]:
    """``Default = wsgi.entrypoint(app)``: a Worker class serving ``app``."""

    class Default(WorkerEntrypoint):
        async def fetch(self, request: Request) -> Response:
            return await fetch(app, request, self.env, self.ctx)

    Default.__qualname__ = "Default"
    return Default


def _environ(request: Request, env: Any, body: bytes) -> dict[str, Any]:
    url = urlsplit(request.url)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": str(request.method).upper(),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(url.path, encoding="latin-1"),  # PEP 3333: bytes seen as latin-1
        "QUERY_STRING": url.query,
        "SERVER_NAME": url.hostname or "localhost",
        "SERVER_PORT": str(url.port) if url.port else DEFAULT_PORTS.get(url.scheme, "80"),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": request.headers.get("cf-connecting-ip") or "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "workers.env": env,
    }
    for name, value in request.headers.raw_items():
        key = name.upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


class _Started:
    """What the app produced in its first call: status, headers, the first chunks and the rest (or None)."""

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.first: list[bytes] = []
        self.chunks: Iterator[bytes] | None = None
        self.result: Iterable[bytes] | None = None

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and self.first:
            raise exc_info[1].with_traceback(exc_info[2])  # too late to change the status: PEP 3333
        self.status, self.headers = status, list(headers)
        return self.first.append  # the legacy write() callable


def _start(app: WSGIApp, environ: dict[str, Any]) -> _Started:
    """Call the app and pull body chunks until one is non-empty: by then the status must be known."""
    started = _Started()
    started.result = app(environ, started.start_response)
    if isinstance(started.result, (list, tuple)):
        started.first.extend(started.result)
    else:
        chunks = iter(started.result)
        for chunk in chunks:
            started.first.append(chunk)
            if chunk:
                started.chunks = chunks
                break
    if started.chunks is None:
        _close(started.result)
    if not started.status:
        raise RuntimeError("The WSGI application did not call start_response()")
    return started


async def _drain(started: _Started) -> AsyncIterator[bytes]:
    try:
        for chunk in started.first:
            yield chunk
        while (chunk := await _in_thread(next, started.chunks, None)) is not None:
            yield chunk
    finally:
        await _in_thread(_close, started.result)


async def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(_with_host_loop, asyncio.get_running_loop(), func, *args)


def _with_host_loop(loop: asyncio.AbstractEventLoop, func: Callable[..., Any], *args: Any) -> Any:
    host_loop.set(loop)  # the thread runs in a copy of the caller's context, so this does not leak
    return func(*args)


def _close(result: Any) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()
