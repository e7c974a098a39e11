"""Cloudflare's Python Workers API (``from workers import WorkerEntrypoint, Response``) for CPython."""

from __future__ import annotations

import inspect
from http import HTTPMethod
from typing import Any

from . import _state
from ._jsdict import JsDict, to_jsdict
from .body import BodyStream
from .context import Context
from .entrypoint import DurableObject, WorkerEntrypoint, WorkflowEntrypoint, handler
from .fetch import fetch
from .formdata import Blob, File, FormData, FormDataValue
from .headers import Headers
from .request import Request
from .response import FetchResponse, Response
from .websocket import WebSocket, WebSocketPair

__all__ = [
    "Blob", "BodyStream", "Context", "DurableObject", "FetchResponse", "File", "FormData", "FormDataValue",
    "HTTPMethod", "Headers", "JsDict", "Request", "Response", "WebSocket", "WebSocketPair", "WorkerEntrypoint",
    "WorkflowEntrypoint", "env", "fetch", "handler", "python_from_rpc", "python_to_rpc", "waitUntil",
    "wait_until",
]


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
    ctx = _state.current_ctx.get()
    if ctx is None:
        raise RuntimeError("wait_until() called outside a request: there is no execution context to extend")
    ctx.waitUntil(awaitable)


def __getattr__(name: str) -> Any:
    # `env` and `wait_until` are resolved per call, from the invocation (or the module load) in progress.
    if name == "env":
        return _state.current_env.get()
    if name in ("wait_until", "waitUntil"):
        return _wait_until
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
