"""Cloudflare's Python Workers API (``from workers import WorkerEntrypoint, Response``) for CPython."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPMethod
from typing import Any, Literal, TypedDict, Union

from . import _state
from ._jsdict import JsDict, to_jsdict
from .body import Body, BodyStream
from .context import Context
from .entrypoint import DurableObject, WorkerEntrypoint, WorkflowEntrypoint, handler
from .fetch import fetch
from .formdata import Blob, File, FormData, FormDataValue
from .headers import Headers
from .request import Request
from .response import FetchResponse, Response
from .websocket import WebSocket, WebSocketPair

__all__ = [
    "Blob", "BlobEnding", "BlobValue", "Body", "BodyStream", "Context", "DurableObject", "FetchKwargs",
    "FetchResponse", "File", "FormData", "FormDataValue", "HTTPMethod", "Headers", "JSBody", "JsDict", "Request",
    "RequestInitCfProperties", "Response", "WebSocket", "WebSocketPair", "WorkerEntrypoint", "WorkflowEntrypoint",
    "env", "fetch", "handler", "import_from_javascript", "patch_env", "python_from_rpc", "python_to_rpc",
    "waitUntil", "wait_until",
]

# Type names the SDK exports for annotations.
BlobValue = Union[str, bytes, Blob]
BlobEnding = Literal["transparent", "native"]
JSBody = Union[str, bytes, FormData, Blob, AsyncIterable[bytes], None]


class RequestInitCfProperties(TypedDict, total=False):
    """The ``cf`` options of an outbound ``fetch`` (accepted; a local edge has no cache to apply them to)."""

    apps: bool
    cacheEverything: bool  # noqa: N815 - Cloudflare's names
    cacheKey: str  # noqa: N815
    cacheTags: list[str]  # noqa: N815
    cacheTtl: int  # noqa: N815
    cacheTtlByStatus: dict[str, int]  # noqa: N815
    image: dict[str, Any]
    mirage: bool
    polish: str
    resolveOverride: str  # noqa: N815
    scrapeShield: bool  # noqa: N815
    webp: bool


class FetchKwargs(TypedDict, total=False):
    """The keyword options of ``fetch`` and ``Request``."""

    headers: Any
    body: JSBody
    method: str | HTTPMethod
    redirect: str
    cf: RequestInitCfProperties
    fetcher: Any


@contextmanager
def patch_env(patch: Mapping[str, Any] | None = None, **values: Any) -> Iterator[Any]:
    """Overlay values on the module-level ``env`` while the block runs (tests of Worker code use it)."""
    invocation = _state.current.get() or _state.Invocation()
    patched = JsDict(invocation.env or {})
    patched.update(patch or {}, **values)
    token = _state.current.set(_state.Invocation(patched, invocation.ctx, invocation.subrequests, invocation.logs))
    try:
        yield patched
    finally:
        _state.current.reset(token)


class _CloudflareWorkers:
    """What ``import_from_javascript("cloudflare:workers")`` gives: the live ``env`` and ``waitUntil``."""

    @property
    def env(self) -> Any:
        return _state.env()

    def waitUntil(self, awaitable: Any) -> None:  # noqa: N802 - JS name
        _wait_until(awaitable)


def import_from_javascript(module_name: str) -> Any:
    if module_name == "cloudflare:workers":
        return _CloudflareWorkers()
    raise ImportError(
        f"import_from_javascript({module_name!r}): edgewise runs Workers on CPython, where only "
        "'cloudflare:workers' exists; use the Python equivalent of that JavaScript module."
    )


def python_from_rpc(value: Any) -> Any:
    """Values crossing from a binding into Python: dicts become attribute-capable ``JsDict``s."""
    return to_jsdict(value)


def python_to_rpc(value: Any) -> Any:
    """Values crossing from Python into a binding; tuples and bytearrays can't cross, as on Workers."""
    if isinstance(value, (tuple, bytearray)) or inspect.iscoroutine(value):
        raise TypeError(f"{type(value).__name__} cannot be sent over RPC.")
    if isinstance(value, dict):
        return {key: python_to_rpc(item) for key, item in value.items()}
    if isinstance(value, list):
        return [python_to_rpc(item) for item in value]
    return value


def _wait_until(awaitable: Any) -> None:
    ctx = _state.ctx()
    if ctx is None:
        raise RuntimeError("wait_until() called outside a request: there is no execution context to extend")
    ctx.waitUntil(awaitable)


def __getattr__(name: str) -> Any:
    # `env` and `wait_until` are resolved per call, from the invocation (or the module load) in progress.
    if name == "env":
        return _state.env()
    if name in ("wait_until", "waitUntil"):
        return _wait_until
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
