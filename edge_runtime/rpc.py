"""What may cross an RPC boundary (service bindings, Durable Object stubs) and how a call crosses it.

Values are copied, as Cloudflare's structured clone copies them: ``None``, ``bool``, numbers, ``str``,
``bytes``, ``datetime``, lists, sets and dicts of these (number keys become strings, as Pyodide's
``to_js`` makes JS object keys); ``Request``/``Response`` objects
and functions pass by reference (a function becomes a stub the callee can call back). Python Workers
refuse tuples and bytearrays (workers-py ``python_to_rpc``); any other object cannot be cloned.
Dicts arrive as ``JsDict``s (attribute access), as ``python_from_rpc`` gives them.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Callable
from typing import Any

from edgewise_sdk.pyodide.ffi import JsException
from edgewise_sdk.workers import Request, Response
from edgewise_sdk.workers._jsdict import to_jsdict

_SCALARS = (type(None), bool, int, float, str, bytes, datetime.datetime, datetime.date)
_BY_REFERENCE = (Request, Response)
# Handlers the runtime calls itself; reaching them by RPC name is refused as on Cloudflare.
_NOT_RPC = frozenset({"fetch", "connect", "alarm", "queue", "scheduled", "tail", "trace", "webSocketMessage",
                      "webSocketClose", "webSocketError", "constructor", "dup", "then"})


def to_rpc(value: Any, where: str = "the argument") -> Any:
    """A copy of ``value`` as the other side receives it; TypeError for what cannot be sent."""
    if isinstance(value, _SCALARS) or isinstance(value, _BY_REFERENCE):
        return value
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, dict):
        return {_object_key(key, where): to_rpc(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, list):
        return [to_rpc(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):  # a JS Set, back as a set
        return {to_rpc(item, f"{where} (an item)") for item in value}
    if isinstance(value, (tuple, bytearray)):
        raise TypeError(f"{type(value).__name__} cannot be sent over RPC ({where}); use a list or bytes instead.")
    if inspect.iscoroutine(value) or inspect.isawaitable(value):
        raise TypeError(f"{where}: an awaitable cannot be sent over RPC; await it first and send its result.")
    if callable(value) and not isinstance(value, type):
        return RpcFunction(value)
    raise TypeError(f"{type(value).__name__} cannot be sent over RPC ({where}): send None, bool, numbers, str, bytes, "
                    "datetime, lists, sets, dicts, a Request, a Response or a function.")


def _object_key(key: Any, where: str) -> str:
    """A dict key as a JS object's key: numbers and booleans become their JS text, as ``to_js`` makes them."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        return str(int(key)) if key.is_integer() else repr(key)
    raise TypeError(f"{where}: a dict key sent over RPC must be a str or a number, got {type(key).__name__} {key!r}")


def from_rpc(value: Any) -> Any:
    """What the receiving Python code sees: dicts with attribute access (``python_from_rpc``)."""
    return to_jsdict(value)


class RpcFunction:
    """A function sent over RPC: calling it calls the original, with the same conversion both ways."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await _call(self._function, "the function", args, kwargs)

    def __repr__(self) -> str:
        return f"<RPC stub of {getattr(self._function, '__qualname__', self._function)!r}>"


def public_method(target: Any, name: str) -> Callable[..., Any]:
    """The bound method an RPC call by ``name`` reaches; TypeError as Cloudflare words it when there is none."""
    method = None
    if not name.startswith("_") and name not in _NOT_RPC:
        method = getattr(target, name, None)
    if method is None or not callable(method) or isinstance(method, type):
        raise TypeError(f'The RPC receiver does not implement the method "{name}".')
    return method


async def call_method(target: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``target.name(*args, **kwargs)`` across the boundary: arguments copied in, result copied out."""
    return await _call(public_method(target, name), f"{name}()", args, kwargs)


async def _call(function: Callable[..., Any], what: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    sent_args = [from_rpc(to_rpc(arg, f"argument {index} of {what}")) for index, arg in enumerate(args)]
    sent_kwargs = {key: from_rpc(to_rpc(arg, f"argument {key!r} of {what}")) for key, arg in kwargs.items()}
    try:
        result = function(*sent_args, **sent_kwargs)
        if inspect.isawaitable(result):
            result = await result
    except JsException:
        raise
    except Exception as error:  # the callee's error reaches the caller with its message, as a JS Error would
        raise JsException(f"{type(error).__name__}: {error}", name="Error") from error
    return from_rpc(to_rpc(result, f"the result of {what}"))
