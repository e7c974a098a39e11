"""``pyodide.ffi`` on CPython: the conversion and proxy helpers Worker code calls, where no JS exists.

Values already are Python here, so ``to_js`` only reshapes containers and proxies only wrap callables; code
written for Pyodide keeps working unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from edgewise_sdk.js import Uint8Array
from edgewise_sdk.workers.wsgi import host_loop

__all__ = [
    "JsDoubleProxy", "JsException", "JsProxy", "can_run_sync", "create_once_callable", "create_proxy",
    "destroy_proxies", "run_sync", "to_js",
]

T = TypeVar("T")


class JsProxy:
    """Base type of JS objects seen from Python. On CPython only proxies made here are instances."""


class JsException(Exception):
    """An error thrown on the JS side; ``name`` is the JS error class (``"Error"``, ``"TypeError"``...)."""

    def __init__(self, message: str = "", name: str = "Error") -> None:
        super().__init__(message)
        self.message, self.name = message, name


class JsDoubleProxy(JsProxy):
    """What ``create_proxy`` returns: calls go to the wrapped object until ``destroy()``."""

    def __init__(self, target: Any, *, once: bool = False) -> None:
        self._target, self._once, self._destroyed = target, once, False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        target = self.unwrap()
        if self._once:
            self.destroy()
        return target(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unwrap(), name)

    def unwrap(self) -> Any:
        if self._destroyed:
            raise JsException("Object has already been destroyed")
        return self._target

    def destroy(self) -> None:
        self._destroyed = True

    def __repr__(self) -> str:
        return f"JsDoubleProxy({'destroyed' if self._destroyed else repr(self._target)})"


def to_js(
    obj: Any,
    *,
    depth: int = -1,
    dict_converter: Callable[[list[tuple[Any, Any]]], Any] | None = None,
    **options: Any,
) -> Any:
    """Python values stay Python: bytes become ``Uint8Array`` (``.buffer`` works), sequences lists, and
    dicts go through ``dict_converter(list_of_pairs)`` when one is given (``Object.fromEntries``).
    Pyodide's other options (``pyproxies``, ``default_converter``...) have nothing to act on and are ignored."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return obj if isinstance(obj, Uint8Array) else Uint8Array(obj)
    if depth == 0:
        return obj
    if isinstance(obj, Mapping):
        pairs = [(key, to_js(value, depth=depth - 1, dict_converter=dict_converter)) for key, value in obj.items()]
        return dict_converter(pairs) if dict_converter is not None else dict(pairs)
    if isinstance(obj, (list, tuple)):
        return [to_js(item, depth=depth - 1, dict_converter=dict_converter) for item in obj]
    return obj


def create_proxy(obj: Any, *, capture_this: bool = False, roundtrip: bool = True) -> JsDoubleProxy:
    return JsDoubleProxy(obj)


def create_once_callable(obj: Callable[..., Any], *, _may_syncify: bool = False) -> JsDoubleProxy:
    return JsDoubleProxy(obj, once=True)


def destroy_proxies(proxies: list[JsDoubleProxy]) -> None:
    for proxy in proxies:
        proxy.destroy()


def can_run_sync() -> bool:
    """True where ``run_sync`` can block: off the event loop's thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def run_sync(awaitable: Awaitable[T]) -> T:
    """Block on ``awaitable`` from synchronous code.

    Works in a thread that serves a request (``workers.wsgi`` runs apps in one): the awaitable runs on the
    request's event loop. On the loop's own thread it cannot: CPython has no JSPI to suspend the stack.
    """
    if not can_run_sync():
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # spares the user a second, misleading "never awaited" warning
        raise RuntimeError(
            "run_sync() cannot block inside the running event loop on CPython (Pyodide suspends the stack with "
            "JSPI; CPython cannot). Use `await` here; run_sync works in WSGI apps served by workers.wsgi, "
            "which run in a thread."
        )
    loop = host_loop.get()
    if loop is not None and loop.is_running():
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), loop).result()
    return asyncio.run(_awaited(awaitable))


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
