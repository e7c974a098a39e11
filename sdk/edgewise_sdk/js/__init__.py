"""``js``: the JavaScript globals Python Workers reach through Pyodide's FFI, backed by ``workers`` on CPython.

Only the names real Worker code uses are here (``from js import Response, JSON, console, ...``); any other name
raises an error that says so, instead of a bare ``cannot import name``. ``HTMLRewriter`` lives in
``html_rewriter.py``, the outbound ``WebSocket`` client in ``websocket.py``.
"""

from __future__ import annotations

import dis
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from edgewise_sdk import workers
from edgewise_sdk.workers import FormData, Headers, JsDict, Request, Response, WebSocketPair
from edgewise_sdk.workers._jsdict import to_jsdict
from edgewise_sdk.workers.websocket import WebSocketRequestResponsePair

from .html_rewriter import HTMLRewriter
from .websocket import WebSocket

__all__ = [
    "JSON", "Blob", "Date", "File", "FormData", "HTMLRewriter", "Headers", "Object", "Request", "Response", "URL",
    "URLSearchParams",
    "Uint8Array", "WebSocket", "WebSocketPair", "WebSocketRequestResponsePair", "console", "fetch",
]

_log = logging.getLogger("edgewise.worker")


def _js_text(value: Any) -> str:
    """How console.log prints one argument once Pyodide has converted it to JS."""
    if isinstance(value, str):
        return value
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


class _Console:
    """``console.log(...)`` and friends, as records on the ``edgewise.worker`` logger."""

    def _emit(self, level: int, args: tuple[Any, ...]) -> None:
        _log.log(level, " ".join(_js_text(arg) for arg in args))

    def log(self, *args: Any) -> None:
        self._emit(logging.INFO, args)

    def info(self, *args: Any) -> None:
        self._emit(logging.INFO, args)

    def warn(self, *args: Any) -> None:
        self._emit(logging.WARNING, args)

    def error(self, *args: Any) -> None:
        self._emit(logging.ERROR, args)

    def debug(self, *args: Any) -> None:
        self._emit(logging.DEBUG, args)


console = _Console()


class JSON:
    """``JSON.stringify`` (compact by default, as in JS) and ``JSON.parse`` (dicts with attribute access)."""

    @staticmethod
    def stringify(value: Any, replacer: Callable[[str, Any], Any] | list[str] | None = None, space: int | str | None = None) -> str:
        if callable(replacer):
            value = _replace(replacer, "", value)
        elif replacer is not None:
            value = _pick(value, list(replacer))
        indent = _indent(space)
        separators = (",", ": ") if indent else (",", ":")
        return json.dumps(value, indent=indent, separators=separators, ensure_ascii=False, default=_json_default)

    @staticmethod
    def parse(text: str | bytes) -> Any:
        return to_jsdict(json.loads(text))


def _indent(space: int | str | None) -> int | str | None:
    """JS caps the indent at 10 spaces (or the first 10 characters of a string); 0 and "" mean compact."""
    if isinstance(space, bool) or not space:
        return None
    return min(space, 10) if isinstance(space, int) else str(space)[:10]


def _replace(replacer: Callable[[str, Any], Any], key: str, value: Any) -> Any:
    value = replacer(key, value)
    if isinstance(value, Mapping):
        return {name: _replace(replacer, str(name), item) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace(replacer, str(index), item) for index, item in enumerate(value)]
    return value


def _pick(value: Any, keys: list[str]) -> Any:
    if isinstance(value, Mapping):
        return {name: _pick(value[name], keys) for name in keys if name in value}
    if isinstance(value, (list, tuple)):
        return [_pick(item, keys) for item in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()  # JS Dates serialise through toJSON() as ISO strings
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {str(index): byte for index, byte in enumerate(bytes(value))}  # a JS Uint8Array's JSON
    raise TypeError(f"JSON.stringify: {type(value).__name__} is not JSON-serializable")


class Object:
    """``Object.fromEntries`` / ``keys`` / ``values`` / ``entries`` / ``assign`` on dicts."""

    @staticmethod
    def new() -> JsDict:
        return JsDict()

    @staticmethod
    def fromEntries(entries: Iterable[Iterable[Any]]) -> JsDict:  # noqa: N802 - JS name
        return JsDict((key, value) for key, value in entries)

    @staticmethod
    def keys(obj: Any) -> list[Any]:
        return list(_fields(obj))

    @staticmethod
    def values(obj: Any) -> list[Any]:
        return list(_fields(obj).values())

    @staticmethod
    def entries(obj: Any) -> list[list[Any]]:
        return [[key, value] for key, value in _fields(obj).items()]

    @staticmethod
    def assign(target: dict[Any, Any], *sources: Mapping[Any, Any]) -> dict[Any, Any]:
        for source in sources:
            target.update(source)
        return target


def _fields(obj: Any) -> Mapping[Any, Any]:
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, (list, tuple, str)):
        return {str(index): item for index, item in enumerate(obj)}
    return vars(obj)


class Blob(workers.Blob):
    """``Blob.new([parts], {"type": "image/png"})``."""

    @classmethod
    def new(cls, parts: Any = (), options: Mapping[str, Any] | None = None, **option_kw: Any) -> Blob:
        chosen = {**(options or {}), **option_kw}
        return cls(parts, type=chosen.get("type", ""), endings=chosen.get("endings"))


class File(workers.File):
    """``File.new([parts], "name.txt", {"type": "text/plain"})``."""

    @classmethod
    def new(cls, parts: Any, name: str, options: Mapping[str, Any] | None = None, **option_kw: Any) -> File:
        chosen = {**(options or {}), **option_kw}
        return cls(parts, name, type=chosen.get("type", ""), endings=chosen.get("endings"),
                   last_modified=chosen.get("lastModified"))


class Uint8Array(bytes):
    """A JS byte array as Python sees it: still ``bytes`` (so it is a valid body), plus the JS members."""

    @classmethod
    def new(cls, data: int | Iterable[int] | bytes = b"") -> Uint8Array:
        return cls(bytes(data))

    @property
    def buffer(self) -> bytes:
        """The ArrayBuffer (``Response(to_js(image).buffer)``): the same bytes."""
        return bytes(self)

    @property
    def byteLength(self) -> int:  # noqa: N802 - JS name
        return len(self)

    @property
    def length(self) -> int:
        return len(self)

    def to_bytes(self) -> bytes:
        return bytes(self)

    def to_py(self) -> memoryview:
        return memoryview(bytes(self))


async def fetch(resource: str | Request, init: Mapping[str, Any] | None = None, **init_kw: Any) -> Response:
    """JS ``fetch(url, {"method": "POST", "headers": {...}, "body": ...})`` on top of ``workers.fetch``."""
    if init is not None and not isinstance(init, Mapping):
        raise TypeError(
            f"js.fetch(resource, init): init must be a dict such as {{'method': 'POST', 'headers': {{...}}}}, "
            f"not {type(init).__name__}"
        )
    return await workers.fetch(resource, **{**(init or {}), **init_kw})


class URLSearchParams:
    """The query of a URL: ``get``, ``getAll``, ``has``, ``set``, ``append``, ``delete``, ``toString``."""

    def __init__(self, init: str | Mapping[str, str] | Iterable[tuple[str, str]] = "") -> None:
        if isinstance(init, str):
            self._pairs = parse_qsl(init.removeprefix("?"), keep_blank_values=True)
        else:
            self._pairs = [(str(key), str(value)) for key, value in (init.items() if isinstance(init, Mapping) else init)]

    @classmethod
    def new(cls, init: str | Mapping[str, str] | Iterable[tuple[str, str]] = "") -> URLSearchParams:
        return cls(init)

    def get(self, name: str) -> str | None:
        return next((value for key, value in self._pairs if key == name), None)

    def getAll(self, name: str) -> list[str]:  # noqa: N802 - JS name
        return [value for key, value in self._pairs if key == name]

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self._pairs)

    def set(self, name: str, value: str) -> None:
        self.delete(name)
        self._pairs.append((name, str(value)))

    def append(self, name: str, value: str) -> None:
        self._pairs.append((name, str(value)))

    def delete(self, name: str) -> None:
        self._pairs = [(key, value) for key, value in self._pairs if key != name]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._pairs))

    def toString(self) -> str:  # noqa: N802 - JS name
        return urlencode(self._pairs)

    __str__ = toString


class URL:
    """``URL.new("https://e.com/a?q=1")`` with the read-only parts Worker code uses."""

    def __init__(self, url: str, base: str | None = None) -> None:
        href = urljoin(str(base), str(url)) if base is not None else str(url)
        parts = urlsplit(href)
        if not parts.scheme or (parts.scheme in ("http", "https", "ws", "wss") and not parts.netloc):
            raise TypeError(f"Invalid URL: {url!r}")
        userinfo, at, host = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}{host.lower()}"  # JS URLs lower-case the host
        self._parts = parts._replace(netloc=netloc, path=parts.path or ("/" if netloc else ""))
        self.searchParams = URLSearchParams(parts.query)  # noqa: N815 - JS name

    @classmethod
    def new(cls, url: str, base: str | None = None) -> URL:
        return cls(url, base)

    @property
    def protocol(self) -> str:
        return f"{self._parts.scheme}:"

    @property
    def host(self) -> str:
        return self._parts.netloc.rpartition("@")[2]

    @property
    def hostname(self) -> str:
        return self._parts.hostname or ""

    @property
    def port(self) -> str:
        return str(self._parts.port) if self._parts.port else ""

    @property
    def pathname(self) -> str:
        return self._parts.path

    @property
    def search(self) -> str:
        return f"?{self._parts.query}" if self._parts.query else ""

    @property
    def hash(self) -> str:
        return f"#{self._parts.fragment}" if self._parts.fragment else ""

    @property
    def origin(self) -> str:
        return f"{self._parts.scheme}://{self.host}"

    @property
    def href(self) -> str:
        return urlunsplit(self._parts)

    def toString(self) -> str:  # noqa: N802 - JS name
        return self.href

    __str__ = toString

    def __repr__(self) -> str:
        return f"URL({self.href!r})"


class Date:
    """``Date.now()``: milliseconds since the epoch."""

    @staticmethod
    def now() -> int:
        return time.time_ns() // 1_000_000


_IMPORT_FROM = dis.opmap["IMPORT_FROM"]


def __getattr__(name: str) -> Any:
    why = (f"edgewise does not support js.{name} (Worker code runs on CPython here, with no JavaScript): the js "
           f"module covers {', '.join(__all__)}. Use the Python equivalent (the workers module, or the standard "
           "library) instead.")
    # `from js import X` swallows an AttributeError into a bare "cannot import name"; an ImportError keeps this
    # message. Everything else (js.X, hasattr, getattr with a default) needs the AttributeError.
    caller = sys._getframe(1)
    if caller.f_lasti >= 0 and caller.f_code.co_code[caller.f_lasti] == _IMPORT_FROM:
        raise ImportError(f"cannot import name {name!r} from 'js': {why}", name="js")
    raise AttributeError(f"edgewise's js shim has no {name!r}: {why}", name=name, obj=sys.modules[__name__])
