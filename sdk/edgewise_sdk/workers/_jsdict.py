"""Binding results as Cloudflare's SDK hands them to Python: dicts that also allow attribute access."""

from __future__ import annotations

from typing import Any


_object_getattribute = object.__getattribute__


class JsDict(dict):
    """A ``dict`` whose keys can also be read and written as attributes (``r.response``).

    Reading ``r.key`` looks in the dict first, except for the names ``dict`` and this class define
    (``r.items`` stays the method). The usual ``__getattr__`` route would first raise and discard an
    AttributeError on every read, several times slower for the attribute reads Workers do per request.
    """

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        if name in _OWN_NAMES:
            return _object_getattribute(self, name)
        try:
            return self[name]
        except KeyError:
            return _object_getattribute(self, name)  # raises AttributeError, then __getattr__ runs

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_py(self) -> dict:
        """Pyodide's JsProxy.to_py(): user code calls it defensively; here the value already is Python."""
        return self


_OWN_NAMES = frozenset(dir(JsDict))


def to_jsdict(value: Any) -> Any:
    """Recursively turn dicts into JsDicts (lists stay lists), like ``python_from_rpc``."""
    if isinstance(value, dict):
        return JsDict({key: to_jsdict(item) for key, item in value.items()})
    if isinstance(value, list):
        return [to_jsdict(item) for item in value]
    return value
