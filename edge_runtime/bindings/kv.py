"""The `kv_namespaces` binding: Workers KV's `get`, `getWithMetadata`, `put`, `delete` and `list`,
with Cloudflare's call shapes, limits and error messages, kept in one SQLite file per namespace.

Every PoP shares one `KvNamespace`, and other edgewise processes may open the same file, so the
database (`kv_store.py`) runs in WAL mode (readers never wait for the writer) with a busy timeout for writers.
SQLite work runs in worker threads, each with its own connection, so a 25 MiB value never holds up
the event loop. Locally KV is strongly consistent (a write is seen at once by every PoP) unless
`[edgewise] kv_propagation_ms` is set: see `kv_propagation.py`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from asyncio import to_thread
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgewise_sdk.workers import BodyStream, JsDict, to_jsdict

from ..config_error import ConfigError
from .kv_store import KvStore

if TYPE_CHECKING:
    from ..config import BindingSpec
    from . import StateDir
    from .kv_propagation import PopKvView

# Cloudflare's limits (developers.cloudflare.com/kv/platform/limits), as miniflare enforces them
MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 25 * 1024 * 1024
MAX_METADATA_BYTES = 1024
MIN_TTL_S = 60  # least cacheTtl, expirationTtl, and time to an absolute expiration
MAX_LIST_LIMIT = 1000
MAX_BULK_KEYS = 100
GET_TYPES = ("text", "json", "arrayBuffer", "stream")
BULK_TYPES = ("text", "json")
GET_OPTIONS = ("type", "cacheTtl")
PUT_OPTIONS = ("expiration", "expirationTtl", "metadata")
LIST_OPTIONS = ("prefix", "limit", "cursor")

DATABASE_FILE = "kv.sqlite"  # under <state>/kv/<namespace id>/
STREAM_CHUNK_BYTES = 64 * 1024


class KVError(Exception):
    """A KV call Cloudflare would refuse; the message reads like workerd's, e.g.
    "KV PUT failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512."."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class KVTypeError(KVError, TypeError):
    """A `type` KV does not know (workerd raises a TypeError for it)."""


def _failed(operation: str, status: int, detail: str) -> KVError:
    return KVError(f"KV {operation} failed: {status} {detail}", status)


def open_binding(spec: BindingSpec, state: StateDir) -> KvNamespace:
    """As `wrangler dev` picks the local namespace: `preview_id`, else `id`, else the binding's name."""
    settings = spec.settings
    namespace_id = settings.get("preview_id") or settings.get("id") or spec.name
    if not isinstance(namespace_id, str) or namespace_id in (".", "..") or "/" in namespace_id \
            or "\\" in namespace_id:
        raise ConfigError(None, "kv_namespaces", f"binding {spec.name!r}: the namespace id must be a plain "
                                                 f"name (it names a folder), got {namespace_id!r}")
    return KvNamespace(str(spec.name), KvStore(database_path(state, namespace_id)))


def database_path(state: StateDir, namespace_id: str) -> Path:
    return state.folder("kv", namespace_id) / DATABASE_FILE



class KvNamespace:
    """`env.<BINDING>` of a `[[kv_namespaces]]` declaration (the name is workerd's, which its errors show)."""

    def __init__(self, name: str, store: KvStore | PopKvView, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self._store = store
        self._clock = clock

    def __repr__(self) -> str:
        return f"<KvNamespace {self.name} at {self._store.path}>"

    @property
    def store(self) -> KvStore | PopKvView:
        return self._store

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    async def get(self, key: str | list[str], type_or_options: str | Mapping[str, Any] | None = None, *,
                  type: str | None = None, cacheTtl: float | None = None) -> Any:  # noqa: A002, N803
        """The value as `type` ("text" by default) or None; for a list of keys, a dict key -> value."""
        options = _get_options(type_or_options, {"type": type, "cacheTtl": cacheTtl})
        found = await self._read(key, options)
        values = {name: _as_type(name, entry[0], options["type"]) if entry else None for name, entry in found.items()}
        return to_jsdict(values) if isinstance(key, list) else values[key]

    async def getWithMetadata(self, key: str | list[str],  # noqa: N802 - JS name
                              type_or_options: str | Mapping[str, Any] | None = None, *,
                              type: str | None = None, cacheTtl: float | None = None) -> JsDict:  # noqa: A002, N803
        """`{value, metadata, cacheStatus}`; for a list of keys, a dict key -> that."""
        options = _get_options(type_or_options, {"type": type, "cacheTtl": cacheTtl})
        found = await self._read(key, options)
        results = {name: JsDict(value=_as_type(name, entry[0], options["type"]) if entry else None,
                                metadata=_metadata(entry[1]) if entry else None, cacheStatus=None)
                   for name, entry in found.items()}
        return to_jsdict(results) if isinstance(key, list) else results[key]

    async def _read(self, key: str | list[str], options: dict[str, Any]) -> dict[str, tuple[bytes, str | None] | None]:
        if isinstance(key, list):
            keys = _checked_bulk(key, options["type"])
            operation = "GET_BULK"
        else:
            keys, operation = [key], "GET"
        for name in keys:
            _check_key(name, operation)
        _check_cache_ttl(options.get("cacheTtl"), operation)
        found = await to_thread(self._store.get, keys, self._clock())
        return {name: found.get(name) for name in keys}

    async def put(self, key: str, value: Any, options: Mapping[str, Any] | None = None, *,
                  expiration: float | None = None, expirationTtl: float | None = None,  # noqa: N803
                  metadata: Any = None) -> None:
        """Store `value` (str, bytes-like, or an async iterable of bytes such as a request body)."""
        given = _options("put", options, {"expiration": expiration, "expirationTtl": expirationTtl,
                                          "metadata": metadata}, PUT_OPTIONS)
        _check_key(key, "PUT")
        now = self._clock()
        expires_at = _expiration(given, int(now))
        metadata_json = _metadata_json(given["metadata"]) if "metadata" in given else None
        data = await _value_bytes(value)
        await to_thread(self._store.put, key, data, expires_at, metadata_json, now)

    async def delete(self, key: str) -> None:
        _check_key(key, "DELETE")
        await to_thread(self._store.delete, key)

    async def list(self, options: Mapping[str, Any] | None = None, *, prefix: str | None = None,
                   limit: int | None = None, cursor: str | None = None) -> JsDict:
        """`{keys: [{name, expiration?, metadata?}], list_complete, cursor?, cacheStatus}`, by key."""
        given = _options("list", options, {"prefix": prefix, "limit": limit, "cursor": cursor}, LIST_OPTIONS)
        prefix = _list_prefix(given.get("prefix"))
        count = _list_limit(given.get("limit", MAX_LIST_LIMIT))
        after = _cursor_key(given["cursor"]) if "cursor" in given else None
        rows = await to_thread(self._store.list, prefix, after, count + 1, self._clock())
        keys = [_listed(name, expires_at, metadata) for name, expires_at, metadata in rows[:count]]
        result = JsDict(keys=keys, list_complete=len(rows) <= count, cacheStatus=None)
        if not result.list_complete:
            result.cursor = _cursor(keys[-1].name)
        return result

    def close(self) -> None:
        self._store.close()


def _options(call: str, options: Any, keywords: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The JS options object: a dict in the options position, then keyword arguments; None means unset."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"KV {call}() options must be a dict or None, got {_describe(options)}")
    merged = {**(options or {}), **{name: value for name, value in keywords.items() if value is not None}}
    unknown = [name for name in merged if name not in allowed]
    if unknown:
        raise TypeError(f"KV {call}() has no option {unknown[0]!r}; its options are {', '.join(allowed)}")
    return {name: value for name, value in merged.items() if value is not None}


def _get_options(type_or_options: Any, keywords: dict[str, Any]) -> dict[str, Any]:
    if isinstance(type_or_options, str):
        type_or_options = {"type": type_or_options}
    options = _options("get", type_or_options, keywords, GET_OPTIONS)
    options.setdefault("type", "text")
    if options["type"] not in GET_TYPES:
        raise KVTypeError(f'Unknown response type {options["type"]!r}. Possible types are "text", "arrayBuffer", '
                          '"json", and "stream".')
    return options


def _checked_bulk(keys: list[Any], value_type: str) -> list[str]:
    if value_type not in BULK_TYPES:
        raise KVTypeError(f'KV get() of a list of keys returns "text" or "json" values, not {value_type!r}')
    if len(keys) > MAX_BULK_KEYS:
        raise _failed("GET_BULK", 400, f"A bulk get takes at most {MAX_BULK_KEYS} keys, got {len(keys)}.")
    return keys


def _check_key(key: Any, operation: str) -> None:
    if not isinstance(key, str):
        raise TypeError(f"KV {operation} key must be a string (or, for get, a list of strings), got {_describe(key)}")
    if key == "":
        raise _failed(operation, 400, "Key names must not be empty")
    if key in (".", ".."):
        raise _failed(operation, 400, f'Illegal key name "{key}". Please use a different name.')
    _check_key_length(key, operation)


def _check_key_length(key: str, operation: str) -> None:
    try:
        length = len(key.encode())
    except UnicodeEncodeError:
        raise TypeError(f"KV {operation} key {key!r} is not valid Unicode (it holds a lone surrogate)") from None
    if length > MAX_KEY_BYTES:
        raise _failed(operation, 414, f"UTF-8 encoded length of {length} exceeds key length limit of {MAX_KEY_BYTES}.")


def _check_cache_ttl(cache_ttl: Any, operation: str) -> None:
    # checked as Cloudflare does, then unused: the one "edge cache" here is the database itself
    if cache_ttl is None:
        return
    if not _is_number(cache_ttl) or math.isnan(cache_ttl) or cache_ttl < MIN_TTL_S:
        raise _failed(operation, 400, f"Invalid cache_ttl of {cache_ttl}. Cache TTL must be at least {MIN_TTL_S}.")


def _expiration(options: dict[str, Any], now: int) -> int | None:
    """The absolute expiry in whole seconds: expirationTtl wins over expiration, as on Cloudflare."""
    if "expirationTtl" in options:
        ttl = _whole_seconds("expirationTtl", options["expirationTtl"])
        if ttl <= 0:
            raise _failed("PUT", 400, f"Invalid expiration_ttl of {ttl}. Please specify integer greater than 0.")
        if ttl < MIN_TTL_S:
            raise _failed("PUT", 400, f"Invalid expiration_ttl of {ttl}. Expiration TTL must be at least {MIN_TTL_S}.")
        return now + ttl
    if "expiration" in options:
        expires_at = _whole_seconds("expiration", options["expiration"])
        if expires_at <= now:
            raise _failed("PUT", 400, f"Invalid expiration of {expires_at}. Please specify integer greater than the "
                                      "current number of seconds since the UNIX epoch.")
        if expires_at < now + MIN_TTL_S:
            raise _failed("PUT", 400, f"Invalid expiration of {expires_at}. Expiration times must be at least "
                                      f"{MIN_TTL_S} seconds in the future.")
        return expires_at
    return None


def _whole_seconds(option: str, value: Any) -> int:
    if not _is_number(value) or not math.isfinite(value):
        raise TypeError(f"KV put() {option} must be a number of seconds, got {_describe(value)}")
    return math.floor(value + 0.5)  # JS Math.round


def _metadata_json(metadata: Any) -> str:
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"KV put() metadata must be JSON-serialisable: {error}") from None
    length = len(text.encode())
    if length > MAX_METADATA_BYTES:
        raise _failed("PUT", 413, f"Metadata length of {length} exceeds limit of {MAX_METADATA_BYTES}.")
    return text


async def _value_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, AsyncIterable):
        data = await _read_capped(value)
    else:
        raise TypeError(f"KV put() value must be a str, bytes or a stream of bytes, got {_describe(value)} "
                        "(json.dumps it first to store a JSON value)")
    if len(data) > MAX_VALUE_BYTES:
        raise _value_too_large(len(data))
    return data


async def _read_capped(stream: AsyncIterable[Any]) -> bytes:
    """A stream read whole, refused as soon as it passes the value limit (the rest is never read)."""
    chunks, length = [], 0
    iterator = aiter(stream)
    try:
        async for chunk in iterator:
            chunk = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
            length += len(chunk)
            if length > MAX_VALUE_BYTES:
                raise _value_too_large(length, at_least=True)
            chunks.append(chunk)
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
    return b"".join(chunks)


def _value_too_large(length: int, at_least: bool = False) -> KVError:
    size = f"at least {length}" if at_least else str(length)
    return _failed("PUT", 413, f"Value length of {size} exceeds limit of {MAX_VALUE_BYTES}.")


def _as_type(key: str, value: bytes, value_type: str) -> Any:
    if value_type == "arrayBuffer":
        return memoryview(value)  # what the Python SDK hands over for a JS ArrayBuffer
    if value_type == "stream":
        return BodyStream(ValueStream(value))
    text = value.decode("utf-8", errors="replace")  # as TextDecoder does
    if value_type == "text":
        return text
    try:
        return to_jsdict(json.loads(text))
    except json.JSONDecodeError as error:
        raise ValueError(f'KV get({key!r}, "json"): the stored value is not JSON ({error})') from None


def _metadata(metadata: str | None) -> Any:
    return None if metadata is None else to_jsdict(json.loads(metadata))


def _listed(name: str, expires_at: int | None, metadata: str | None) -> JsDict:
    entry = JsDict(name=name)
    if expires_at is not None:
        entry.expiration = expires_at
    if metadata is not None:
        entry.metadata = _metadata(metadata)
    return entry


def _list_prefix(prefix: Any) -> str:
    if prefix is None:
        return ""
    if not isinstance(prefix, str):
        raise TypeError(f"KV list() prefix must be a string, got {_describe(prefix)}")
    _check_key_length(prefix, "LIST")
    return prefix


def _list_limit(limit: Any) -> int:
    if not _is_number(limit):
        raise TypeError(f"KV list() limit must be a number, got {_describe(limit)}")
    if limit != limit or limit < 1:  # limit != limit: NaN
        raise _failed("LIST", 400, f"Invalid key_count_limit of {limit}. Please specify an integer greater than 0.")
    if limit > MAX_LIST_LIMIT:
        raise _failed("LIST", 400, f"Invalid key_count_limit of {limit}. Please specify an integer less than or "
                                   f"equal to {MAX_LIST_LIMIT}.")
    return int(limit)


def _cursor(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode()).decode().rstrip("=")


def _cursor_key(cursor: Any) -> str:
    """The last key of the page a cursor came from (an opaque string to the Worker)."""
    try:
        if not isinstance(cursor, str) or not cursor:
            raise ValueError
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error):
        raise _failed("LIST", 400, f"Invalid cursor {cursor!r}: pass the cursor of the previous list() "
                                   "result unchanged") from None


class ValueStream:
    """A stored value as the byte stream `get(key, "stream")` returns: chunks, readable once like a JS stream."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._started = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise OSError("Body already used: a KV value stream can be read once")
        self._started = True
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        view = memoryview(self._data)
        for start in range(0, len(view), STREAM_CHUNK_BYTES):
            yield bytes(view[start:start + STREAM_CHUNK_BYTES])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]
