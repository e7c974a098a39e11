"""The `r2_buckets` binding: R2's `head`, `get`, `put`, `delete`, `list` and multipart uploads, with
Cloudflare's call shapes, objects, limits and error messages, kept as files under one folder per bucket.

An object's bytes are a file named by a random id under `blobs/`, never by its key (a key may hold
"/" or ".."); a SQLite index (WAL, busy timeout) maps keys to blobs and metadata. A body is streamed
into a file under `incoming/` in chunks, hashed as it goes, then renamed into `blobs/` in the same
transaction that points the key at it, so a reader sees the old object or the new one, whole; a read
streams the file back in 64 KiB chunks. Neither side holds a body in memory. Every PoP shares one
`R2Bucket`; its SQLite and file work runs on worker threads, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import uuid
import weakref
from asyncio import to_thread
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edgewise_sdk.workers import Blob, Body, BodyStream, Headers, JsDict, to_jsdict

from ..config_error import ConfigError

if TYPE_CHECKING:
    from ..config import BindingSpec
    from . import StateDir

# Cloudflare's limits (developers.cloudflare.com/r2/platform/limits)
MAX_KEY_BYTES = 1024
MAX_PUT_BYTES = 5 * 1024**3 - 5 * 1024**2  # 4.995 GiB in one put or one part
MAX_CUSTOM_METADATA_BYTES = 8192
MAX_LIST_LIMIT = 1000
MAX_DELETE_KEYS = 1000
MIN_PART_BYTES = 5 * 1024 * 1024  # every part but the last
MAX_PART_NUMBER = 10000
STORAGE_CLASSES = ("Standard", "InfrequentAccess")
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
JURISDICTIONS = ("eu", "fedramp")

INDEX_FILE = "index.sqlite"  # under <state>/r2/<bucket>/, beside blobs/ and incoming/
BUSY_TIMEOUT_S = 30.0
STREAM_CHUNK_BYTES = 64 * 1024
WRITE_BATCH_BYTES = 1024 * 1024  # incoming chunks are gathered to this size per trip to a thread
HASHES = {"md5": 16, "sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}  # name -> digest bytes
HTTP_FIELDS = {  # httpMetadata name -> header
    "contentType": "content-type", "contentLanguage": "content-language",
    "contentDisposition": "content-disposition", "contentEncoding": "content-encoding",
    "cacheControl": "cache-control", "cacheExpiry": "expires",
}
CONDITIONS = ("etagMatches", "etagDoesNotMatch", "uploadedBefore", "uploadedAfter", "secondsGranularity")
GET_OPTIONS = ("range", "onlyIf")
PUT_OPTIONS = ("onlyIf", "httpMetadata", "customMetadata", "storageClass", *HASHES)
LIST_OPTIONS = ("prefix", "cursor", "delimiter", "startAfter", "limit", "include")
UPLOAD_OPTIONS = ("httpMetadata", "customMetadata", "storageClass")
INCLUDES = ("httpMetadata", "customMetadata")
SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,  -- BINARY collation on UTF-8 text: listed in UTF-8 byte order, as R2 does
    blob TEXT NOT NULL,    -- file name under blobs/
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    uploaded_ms INTEGER NOT NULL,
    http_metadata TEXT NOT NULL,    -- JSON
    custom_metadata TEXT NOT NULL,  -- JSON
    checksums TEXT NOT NULL,        -- JSON: hash name -> hex
    storage_class TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    http_metadata TEXT NOT NULL,
    custom_metadata TEXT NOT NULL,
    storage_class TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
"""


class R2Error(Exception):
    """An R2 call Cloudflare would refuse; the message reads like workerd's,
    "put: The Content-MD5 you specified did not match what we received. (10037)"."""

    def __init__(self, operation: str, message: str, code: int | None = None) -> None:
        super().__init__(f"{operation}: {message}" + (f" ({code})" if code is not None else ""))
        self.code = code


class R2RangeError(R2Error, ValueError):
    """A `range` R2 cannot serve (workerd raises a RangeError or InvalidRange, 10039)."""


def open_binding(spec: BindingSpec, state: StateDir) -> R2Bucket:
    """The bucket `bucket_name` names (with its `jurisdiction`, if any), as `wrangler dev` keeps it locally."""
    bucket_name = spec.settings.get("bucket_name")
    jurisdiction = spec.settings.get("jurisdiction")
    if not isinstance(bucket_name, str) or not BUCKET_NAME.fullmatch(bucket_name):
        raise ConfigError(None, "r2_buckets", f"binding {spec.name!r}: bucket_name must be 3 to 63 lower-case "
                                              f"letters, digits and hyphens, starting and ending with a letter "
                                              f"or digit, as R2 names buckets; got {bucket_name!r}")
    if jurisdiction is not None and jurisdiction not in JURISDICTIONS:
        raise ConfigError(None, "r2_buckets", f"binding {spec.name!r}: jurisdiction must be one of "
                                              f"{', '.join(JURISDICTIONS)}; got {jurisdiction!r}")
    return R2Bucket(str(spec.name), BlobStore(bucket_folder(state, bucket_name, jurisdiction)))


def bucket_folder(state: StateDir, bucket_name: str, jurisdiction: str | None = None) -> Path:
    """`<state>/r2/<bucket>`; a jurisdiction's bucket is another bucket (`files.eu`; R2 names have no dots)."""
    return state.folder("r2", bucket_name if jurisdiction is None else f"{bucket_name}.{jurisdiction}")


# --- storage: blobs on disk, an index in SQLite ---------------------------------------------------

@dataclass(frozen=True)
class _Row:
    """One object as the index holds it."""

    key: str
    blob: str
    version: str
    size: int
    etag: str
    uploaded_ms: int
    http_metadata: str
    custom_metadata: str
    checksums: str
    storage_class: str


@dataclass(frozen=True)
class _Part:
    part_number: int
    blob: str
    size: int
    etag: str


@dataclass(frozen=True)
class _Upload:
    key: str
    http_metadata: str
    custom_metadata: str
    storage_class: str


_ROW_COLUMNS = "key, blob, version, size, etag, uploaded_ms, http_metadata, custom_metadata, checksums, storage_class"


class BlobStore:
    """One bucket's folder: blob files, incoming files, and the SQLite index (a connection per thread)."""

    def __init__(self, folder: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.folder = folder
        self.blobs, self.incoming = folder / "blobs", folder / "incoming"
        self.blobs.mkdir(exist_ok=True)
        self.incoming.mkdir(exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._in_use: set[sqlite3.Connection] = set()
        self._lock = threading.Lock()
        self._closed = False
        with self._session() as connection:
            connection.executescript(SCHEMA)

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection; `close` leaves one in use to be closed by its thread afterwards."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the R2 bucket {self.folder} is closed (the dev run stopped or reloaded its "
                                   "bindings)")
            if connection is None:
                connection = self._local.connection = self._connect()
                self._connections.append(connection)
            self._in_use.add(connection)
        try:
            yield connection
        finally:
            with self._lock:
                self._in_use.discard(connection)
                if self._closed:
                    connection.close()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.folder / INDEX_FILE, timeout=self.busy_timeout_s, isolation_level=None,
                                     check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._session() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for connection in self._connections:
                if connection not in self._in_use:
                    connection.close()
            self._connections.clear()

    # objects

    def lookup(self, key: str) -> _Row | None:
        with self._session() as connection:
            return _row(connection, key)

    def open_object(self, key: str) -> tuple[_Row, IO[bytes]] | None:
        """The object and its blob opened for reading; the open file keeps these bytes even if the key is
        overwritten or deleted meanwhile, as an R2 read is a snapshot."""
        while True:
            row = self.lookup(key)
            if row is None:
                return None
            try:
                return row, open(self.blobs / row.blob, "rb")
            except FileNotFoundError:
                continue  # replaced between the lookup and the open: read the index again

    def new_incoming(self) -> Path:
        return self.incoming / f"{uuid.uuid4().hex}.part"

    def commit_object(self, row: _Row, incoming: Path, admits: Callable[[_Row | None], bool]) -> bool:
        """Point `row.key` at `incoming` (renamed to blobs/<row.blob>) if `admits` the current object."""
        try:
            with self._write() as connection:
                current = _row(connection, row.key)
                if not admits(current):
                    return False
                os.replace(incoming, self.blobs / row.blob)
                connection.execute(f"INSERT OR REPLACE INTO objects ({_ROW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                   (row.key, row.blob, row.version, row.size, row.etag, row.uploaded_ms,
                                    row.http_metadata, row.custom_metadata, row.checksums, row.storage_class))
        except BaseException:
            _unlink(incoming, self.blobs / row.blob)
            raise
        finally:
            _unlink(incoming)
        if current is not None:
            _unlink(self.blobs / current.blob)
        return True

    def delete(self, keys: list[str]) -> None:
        with self._write() as connection:
            marks = ",".join("?" * len(keys))
            blobs = [blob for (blob,) in connection.execute(f"SELECT blob FROM objects WHERE key IN ({marks})", keys)]
            connection.execute(f"DELETE FROM objects WHERE key IN ({marks})", keys)
        _unlink(*(self.blobs / blob for blob in blobs))

    def list_entries(self, prefix: str, after: str | None, inclusive: bool, delimiter: str | None,
                     count: int) -> list[_Row | str]:
        """Up to `count` entries from the position, by key: objects, and each delimited prefix once in
        place of the keys under it."""
        entries: list[_Row | str] = []
        high = _prefix_end(prefix)
        with self._session() as connection:
            while len(entries) < count:
                wanted = count - len(entries)
                rows = _scan(connection, prefix, after, inclusive, high, wanted)
                for row in rows:
                    common = _delimited(row.key, prefix, delimiter)
                    if common is not None:
                        entries.append(common)
                        after, inclusive = _prefix_end(common), True  # skip every key under it
                        break
                    entries.append(row)
                    after, inclusive = row.key, False
                else:
                    if len(rows) < wanted:
                        return entries
                if after is None:
                    return entries
        return entries

    # multipart uploads

    def create_upload(self, upload_id: str, upload: _Upload) -> None:
        with self._session() as connection:
            connection.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?)", (upload_id, upload.key,
                               upload.http_metadata, upload.custom_metadata, upload.storage_class))

    def find_upload(self, upload_id: str, key: str) -> _Upload | None:
        with self._session() as connection:
            return _upload(connection, upload_id, key)

    def commit_part(self, upload_id: str, key: str, part: _Part, incoming: Path) -> bool:
        """Keep `incoming` as a part of the upload (replacing one of the same number); False: no such upload."""
        try:
            with self._write() as connection:
                if _upload(connection, upload_id, key) is None:
                    return False
                replaced = connection.execute("SELECT blob FROM parts WHERE upload_id = ? AND part_number = ?",
                                              (upload_id, part.part_number)).fetchone()
                os.replace(incoming, self.blobs / part.blob)
                connection.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
                                   (upload_id, part.part_number, part.blob, part.size, part.etag))
        except BaseException:
            _unlink(self.blobs / part.blob)
            raise
        finally:
            _unlink(incoming)
        if replaced is not None:
            _unlink(self.blobs / replaced[0])
        return True

    def parts(self, upload_id: str) -> dict[int, _Part]:
        with self._session() as connection:
            rows = connection.execute("SELECT part_number, blob, size, etag FROM parts WHERE upload_id = ?",
                                      (upload_id,)).fetchall()
        return {row[0]: _Part(*row) for row in rows}

    def join_parts(self, parts: list[_Part], incoming: Path) -> None:
        """Copy the parts, in order, into one incoming file, a chunk at a time."""
        with open(incoming, "wb") as out:
            for part in parts:
                with open(self.blobs / part.blob, "rb") as source:
                    while chunk := source.read(WRITE_BATCH_BYTES):
                        out.write(chunk)

    def finish_upload(self, upload_id: str, key: str, row: _Row | None = None, incoming: Path | None = None) -> bool:
        """Drop the upload and its parts, first storing `row` (completion) unless it is None (abort)."""
        try:
            with self._write() as connection:
                if _upload(connection, upload_id, key) is None:
                    return False
                blobs = [blob for (blob,) in connection.execute("SELECT blob FROM parts WHERE upload_id = ?",
                                                                (upload_id,))]
                connection.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
                connection.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
                current = _row(connection, row.key) if row else None
                if row is not None and incoming is not None:
                    os.replace(incoming, self.blobs / row.blob)
                    connection.execute(f"INSERT OR REPLACE INTO objects ({_ROW_COLUMNS}) VALUES "
                                       "(?,?,?,?,?,?,?,?,?,?)", (row.key, row.blob, row.version, row.size, row.etag,
                                                                 row.uploaded_ms, row.http_metadata,
                                                                 row.custom_metadata, row.checksums, row.storage_class))
        except BaseException:
            if row is not None:
                _unlink(self.blobs / row.blob)
            raise
        finally:
            if incoming is not None:
                _unlink(incoming)
        _unlink(*(self.blobs / blob for blob in blobs))
        if current is not None:
            _unlink(self.blobs / current.blob)
        return True


def _row(connection: sqlite3.Connection, key: str) -> _Row | None:
    found = connection.execute(f"SELECT {_ROW_COLUMNS} FROM objects WHERE key = ?", (key,)).fetchone()
    return None if found is None else _Row(*found)


def _upload(connection: sqlite3.Connection, upload_id: str, key: str) -> _Upload | None:
    found = connection.execute("SELECT key, http_metadata, custom_metadata, storage_class FROM uploads "
                               "WHERE upload_id = ?", (upload_id,)).fetchone()
    return None if found is None or found[0] != key else _Upload(*found)


def _scan(connection: sqlite3.Connection, prefix: str, after: str | None, inclusive: bool, high: str | None,
          count: int) -> list[_Row]:
    if after is None or after < prefix:
        where, params = ["key >= ?"], [prefix]
    else:
        where, params = ["key >= ?" if inclusive else "key > ?"], [after]
    if high is not None:
        where.append("key < ?")
        params.append(high)
    rows = connection.execute(f"SELECT {_ROW_COLUMNS} FROM objects WHERE {' AND '.join(where)} ORDER BY key "
                              "LIMIT ?", (*params, count)).fetchall()
    return [_Row(*row) for row in rows]


def _delimited(key: str, prefix: str, delimiter: str | None) -> str | None:
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return None if at < 0 else key[:at + len(delimiter)]


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (code point order is UTF-8 byte order)."""
    while prefix and prefix[-1] == "\U0010ffff":
        prefix = prefix[:-1]
    if not prefix:
        return None
    following = ord(prefix[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are not characters: the next one is U+E000
        following = 0xE000
    return prefix[:-1] + chr(following)


def _unlink(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


# --- bodies in and out ----------------------------------------------------------------------------

class _IncomingFile:
    """A body being written to an incoming file, hashed as it goes (runs on worker threads)."""

    def __init__(self, path: Path, hash_names: tuple[str, ...]) -> None:
        self.path = path
        self.size = 0
        self.hashes = {name: hashlib.new(name) for name in ("md5", *hash_names)}
        self._file: IO[bytes] | None = open(path, "wb")  # noqa: SIM115 - closed by finish/discard

    def write(self, chunks: list[bytes]) -> None:
        assert self._file is not None
        for chunk in chunks:
            self._file.write(chunk)
            for digest in self.hashes.values():
                digest.update(chunk)
            self.size += len(chunk)

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.finish()
        _unlink(self.path)


async def _receive(operation: str, value: Any, incoming: _IncomingFile) -> None:
    """Write a put's value to `incoming` in batches, refusing it once it passes the size limit."""
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) > MAX_PUT_BYTES:
            raise _too_large(operation)
        await to_thread(incoming.write, [bytes(value)])
        return
    if isinstance(value, Blob):
        await to_thread(incoming.write, [await value.bytes()])
        return
    batch: list[bytes] = []
    batch_bytes = 0
    async for chunk in _chunks_of(operation, value):
        batch.append(chunk)
        batch_bytes += len(chunk)
        if incoming.size + batch_bytes > MAX_PUT_BYTES:
            raise _too_large(operation)
        if batch_bytes >= WRITE_BATCH_BYTES:
            await to_thread(incoming.write, batch)
            batch, batch_bytes = [], 0
    if batch:
        await to_thread(incoming.write, batch)


async def _chunks_of(operation: str, value: Any) -> AsyncIterator[bytes]:
    if isinstance(value, Body):
        raise TypeError(f"R2 {operation}() takes a body, not a {type(value).__name__}: pass request.body "
                        "(or await request.bytes())")
    if not isinstance(value, AsyncIterable):
        raise TypeError(f"R2 {operation}() value must be a str, bytes, None, a Blob or a stream of bytes "
                        f"(such as request.body), got {_describe(value)}")
    chunks = aiter(value)
    try:
        async for chunk in chunks:
            if isinstance(chunk, str):
                chunk = chunk.encode()
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"R2 {operation}() stream gave {_describe(chunk)}; a body stream gives bytes")
            yield bytes(chunk)
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


def _too_large(operation: str) -> R2Error:
    return R2Error(operation, f"Your proposed upload exceeds the maximum allowed object size of {MAX_PUT_BYTES} "
                              "bytes (use a multipart upload for more).", 100100)


class BlobChunks:
    """An object's bytes read from its open blob file in 64 KiB chunks, once, each read on a worker thread."""

    def __init__(self, file: IO[bytes], offset: int, length: int) -> None:
        self._file, self._offset, self._left = file, offset, length
        self._started = False
        # an object whose body is never read must not keep its file open
        self._finalizer = weakref.finalize(self, file.close)

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise OSError("Body already used: an R2 object body can be read once")
        self._started = True
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            position = self._offset
            while self._left > 0:
                chunk = await to_thread(_read_at, self._file, position, min(STREAM_CHUNK_BYTES, self._left))
                if not chunk:
                    raise OSError("the R2 object's file ended early; was it changed outside edgewise?")
                position += len(chunk)
                self._left -= len(chunk)
                yield chunk
        finally:
            self._finalizer()


def _read_at(file: IO[bytes], position: int, size: int) -> bytes:
    return os.pread(file.fileno(), size, position)


# --- objects as the Worker sees them --------------------------------------------------------------

class R2Checksums:
    """The hashes R2 keeps for an object (each as bytes, or None); `toJSON()` gives them as hex."""

    def __init__(self, hex_digests: Mapping[str, str]) -> None:
        for name in HASHES:
            setattr(self, name, bytes.fromhex(hex_digests[name]) if name in hex_digests else None)

    def toJSON(self) -> JsDict:
        return JsDict({name: getattr(self, name).hex() for name in HASHES if getattr(self, name) is not None})

    def __repr__(self) -> str:
        return f"R2Checksums({dict(self.toJSON())})"


@dataclass(eq=False)
class R2Object:
    """An object's metadata, as `head`, `put`, `list` and a refused `get(onlyIf=...)` return it."""

    key: str
    version: str
    size: int
    etag: str
    httpEtag: str
    uploaded: datetime
    httpMetadata: JsDict
    customMetadata: JsDict
    checksums: R2Checksums
    storageClass: str
    range: JsDict | None = None
    ssecKeyMd5: str | None = None

    def writeHttpMetadata(self, headers: Any) -> None:
        """Set content-type, cache-control, expires and the like on a `Headers` (or a dict)."""
        for name, header in HTTP_FIELDS.items():
            value = self.httpMetadata.get(name)
            if value is None:
                continue
            text = format_datetime(value, usegmt=True) if isinstance(value, datetime) else str(value)
            if hasattr(headers, "set"):
                headers.set(header, text)
            else:
                headers[header] = text


@dataclass(eq=False)
class R2ObjectBody(R2Object):
    """What `get` returns: the object and its bytes, readable once as a stream or whole."""

    _chunks: BlobChunks | None = field(default=None, repr=False)
    _body_used: bool = field(default=False, repr=False)

    @property
    def body(self) -> BodyStream:
        assert self._chunks is not None
        return BodyStream(self._chunks, self)  # type: ignore[arg-type] - BodyStream only reads _body_used

    @property
    def bodyUsed(self) -> bool:
        return self._body_used

    async def bytes(self) -> bytes:
        return b"".join([chunk async for chunk in self.body])

    async def arrayBuffer(self) -> bytes:
        return await self.bytes()

    async def text(self) -> str:
        return (await self.bytes()).decode("utf-8-sig", errors="replace")  # as TextDecoder does

    async def json(self) -> Any:
        return to_jsdict(json.loads(await self.text()))

    async def blob(self) -> Blob:
        return Blob([await self.bytes()], type=self.httpMetadata.get("contentType") or "")


def _object(row: _Row, kind: type[R2Object] = R2Object, include: tuple[str, ...] = INCLUDES,
            **extra: Any) -> Any:
    uploaded = datetime.fromtimestamp(row.uploaded_ms / 1000, UTC)
    return kind(key=row.key, version=row.version, size=row.size, etag=row.etag, httpEtag=f'"{row.etag}"',
                uploaded=uploaded,
                httpMetadata=_http_metadata_out(row.http_metadata) if "httpMetadata" in include else JsDict(),
                customMetadata=JsDict(json.loads(row.custom_metadata)) if "customMetadata" in include else JsDict(),
                checksums=R2Checksums(json.loads(row.checksums)), storageClass=row.storage_class, **extra)


def _http_metadata_out(stored: str) -> JsDict:
    metadata = JsDict(json.loads(stored))
    if "cacheExpiry" in metadata:
        metadata.cacheExpiry = datetime.fromtimestamp(metadata.cacheExpiry / 1000, UTC)
    return metadata


# --- the binding ----------------------------------------------------------------------------------

class R2Bucket:
    """`env.<BINDING>` of an `[[r2_buckets]]` declaration."""

    def __init__(self, name: str, store: BlobStore) -> None:
        self.name = name
        self._store = store

    def __repr__(self) -> str:
        return f"<R2Bucket {self.name} at {self._store.folder}>"

    async def head(self, key: str) -> R2Object | None:
        _check_key("head", key)
        row = await to_thread(self._store.lookup, key)
        return None if row is None else _object(row)

    async def get(self, key: str, options: Mapping[str, Any] | None = None, *, range: Any = None,
                  onlyIf: Any = None) -> R2ObjectBody | R2Object | None:
        """The object with its body, None if there is none, or the object without a body if `onlyIf` fails."""
        given = _options("get", options, {"range": range, "onlyIf": onlyIf}, GET_OPTIONS)
        _check_key("get", key)
        condition = _condition("get", given.get("onlyIf"))
        wanted = _range("get", given.get("range"))
        opened = await to_thread(self._store.open_object, key)
        if opened is None:
            return None
        row, file = opened
        try:
            if condition is not None and not condition.admits(row):
                file.close()
                return _object(row)
            offset, length = wanted.resolve(row.size) if wanted is not None else (0, row.size)
        except BaseException:
            file.close()
            raise
        return _object(row, R2ObjectBody, range=JsDict(offset=offset, length=length),
                       _chunks=BlobChunks(file, offset, length))

    async def put(self, key: str, value: Any, options: Mapping[str, Any] | None = None, *, onlyIf: Any = None,
                  httpMetadata: Any = None, customMetadata: Any = None, storageClass: str | None = None,
                  md5: Any = None, sha1: Any = None, sha256: Any = None, sha384: Any = None,
                  sha512: Any = None) -> R2Object | None:
        """Store `value` (str, bytes, None, a Blob or a stream of bytes); None if `onlyIf` fails."""
        given = _options("put", options, {"onlyIf": onlyIf, "httpMetadata": httpMetadata,
                                          "customMetadata": customMetadata, "storageClass": storageClass,
                                          "md5": md5, "sha1": sha1, "sha256": sha256, "sha384": sha384,
                                          "sha512": sha512}, PUT_OPTIONS)
        _check_key("put", key)
        condition = _condition("put", given.get("onlyIf"))
        http, custom = _http_metadata_in("put", given.get("httpMetadata")), _custom_metadata_in("put", given)
        storage_class = _storage_class("put", given.get("storageClass"))
        expected = _expected_hash(given)
        incoming = await _received("put", value, self._store.new_incoming(), expected)
        hex_digests = {name: digest.hexdigest() for name, digest in incoming.hashes.items()}
        checksums = {name: hex_digests[name] for name in ("md5", *(expected[:1] if expected else ()))}
        row = _Row(key, uuid.uuid4().hex, uuid.uuid4().hex, incoming.size, hex_digests["md5"], _now_ms(), http,
                   custom, json.dumps(checksums), storage_class)
        admits = condition.admits if condition is not None else _always
        stored = await to_thread(self._store.commit_object, row, incoming.path, admits)
        return _object(row) if stored else None

    async def delete(self, keys: str | list[str]) -> None:
        """Delete one key or a list of up to 1000; keys that hold nothing are fine."""
        if isinstance(keys, str):
            keys = [keys]
        elif not isinstance(keys, list):
            raise TypeError(f"R2 delete() takes a key or a list of keys, got {_describe(keys)}")
        if len(keys) > MAX_DELETE_KEYS:
            raise R2Error("delete", f"A delete takes at most {MAX_DELETE_KEYS} keys, got {len(keys)}; delete them "
                                    f"in batches.")
        for key in keys:
            _check_key("delete", key)
        if keys:
            await to_thread(self._store.delete, keys)

    async def list(self, options: Mapping[str, Any] | None = None, *, prefix: str | None = None,
                   cursor: str | None = None, delimiter: str | None = None, startAfter: str | None = None,
                   limit: int | None = None, include: list[str] | None = None) -> JsDict:
        """`{objects, truncated, cursor?, delimitedPrefixes}`, by key (UTF-8 byte order)."""
        given = _options("list", options, {"prefix": prefix, "cursor": cursor, "delimiter": delimiter,
                                           "startAfter": startAfter, "limit": limit, "include": include},
                         LIST_OPTIONS)
        prefix_ = _list_text("prefix", given.get("prefix", ""))
        delimiter_ = _list_text("delimiter", given.get("delimiter", "")) or None
        count = _list_limit(given.get("limit", MAX_LIST_LIMIT))
        included = _includes(given.get("include", []))
        if "cursor" in given:
            after, inclusive = _cursor_position(given["cursor"])
        else:
            after, inclusive = _list_text("startAfter", given.get("startAfter", "")) or None, False
        entries = await to_thread(self._store.list_entries, prefix_, after, inclusive, delimiter_, count + 1)
        page = entries[:count]
        result = JsDict(objects=[_object(entry, include=included) for entry in page if isinstance(entry, _Row)],
                        truncated=len(entries) > count,
                        delimitedPrefixes=[entry for entry in page if isinstance(entry, str)])
        if result.truncated:
            result.cursor = _cursor(page[-1])
        return result

    async def createMultipartUpload(self, key: str, options: Mapping[str, Any] | None = None, *,
                                    httpMetadata: Any = None, customMetadata: Any = None,
                                    storageClass: str | None = None) -> R2MultipartUpload:
        given = _options("createMultipartUpload", options, {"httpMetadata": httpMetadata,
                         "customMetadata": customMetadata, "storageClass": storageClass}, UPLOAD_OPTIONS)
        _check_key("createMultipartUpload", key)
        upload = _Upload(key, _http_metadata_in("createMultipartUpload", given.get("httpMetadata")),
                         _custom_metadata_in("createMultipartUpload", given),
                         _storage_class("createMultipartUpload", given.get("storageClass")))
        upload_id = base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode().rstrip("=")
        await to_thread(self._store.create_upload, upload_id, upload)
        return R2MultipartUpload(self._store, key, upload_id)

    def resumeMultipartUpload(self, key: str, uploadId: str) -> R2MultipartUpload:
        """Synchronous, as in workerd: an unknown upload id is found out by the first call on it."""
        _check_key("resumeMultipartUpload", key)
        if not isinstance(uploadId, str) or not uploadId:
            raise TypeError(f"R2 resumeMultipartUpload() uploadId must be the string createMultipartUpload gave, "
                            f"got {_describe(uploadId)}")
        return R2MultipartUpload(self._store, key, uploadId)

    def close(self) -> None:
        self._store.close()


class R2MultipartUpload:
    """An upload begun by `createMultipartUpload`: parts are kept as blobs until `complete` joins them."""

    def __init__(self, store: BlobStore, key: str, upload_id: str) -> None:
        self._store = store
        self.key, self.uploadId = key, upload_id

    def __repr__(self) -> str:
        return f"<R2MultipartUpload {self.key!r} {self.uploadId}>"

    async def uploadPart(self, partNumber: int, value: Any, options: Mapping[str, Any] | None = None) -> JsDict:
        """`{partNumber, etag}` for the part stored (a part sent again under its number replaces it)."""
        _options("uploadPart", options, {}, ())
        if not isinstance(partNumber, int) or isinstance(partNumber, bool) or not 1 <= partNumber <= MAX_PART_NUMBER:
            raise R2Error("uploadPart", f"Part number must be between 1 and {MAX_PART_NUMBER} (inclusive), got "
                                        f"{partNumber!r}.", 10029)
        await self._found("uploadPart")
        incoming = await _received("uploadPart", value, self._store.new_incoming(), None)
        part = _Part(partNumber, uuid.uuid4().hex, incoming.size, incoming.hashes["md5"].hexdigest())
        if not await to_thread(self._store.commit_part, self.uploadId, self.key, part, incoming.path):
            raise _no_such_upload("uploadPart")
        return JsDict(partNumber=partNumber, etag=part.etag)

    async def complete(self, uploadedParts: list[Any]) -> R2Object:
        """Join the listed parts (by partNumber) into the object, S3's etag `<md5 of part md5s>-<parts>`."""
        operation = "completeMultipartUpload"
        listed = _listed_parts(uploadedParts)
        upload = await self._found(operation)
        stored = await to_thread(self._store.parts, self.uploadId)
        parts = [_chosen_part(stored, number, etag) for number, etag in listed]
        _check_part_sizes(parts)
        part_md5s = b"".join(bytes.fromhex(part.etag) for part in parts)
        row = _Row(self.key, uuid.uuid4().hex, uuid.uuid4().hex, sum(part.size for part in parts),
                   f"{hashlib.md5(part_md5s).hexdigest()}-{len(parts)}", _now_ms(), upload.http_metadata,
                   upload.custom_metadata, "{}", upload.storage_class)
        incoming = self._store.new_incoming()
        try:
            await to_thread(self._store.join_parts, parts, incoming)
        except BaseException:
            _unlink(incoming)
            raise
        if not await to_thread(self._store.finish_upload, self.uploadId, self.key, row, incoming):
            raise _no_such_upload(operation)
        return _object(row)

    async def abort(self) -> None:
        if not await to_thread(self._store.finish_upload, self.uploadId, self.key):
            raise _no_such_upload("abortMultipartUpload")

    async def _found(self, operation: str) -> _Upload:
        upload = await to_thread(self._store.find_upload, self.uploadId, self.key)
        if upload is None:
            raise _no_such_upload(operation)
        return upload


def _no_such_upload(operation: str) -> R2Error:
    return R2Error(operation, "The specified multipart upload does not exist.", 10024)


def _listed_parts(parts: Any) -> list[tuple[int, str]]:
    if not isinstance(parts, list) or not parts:
        raise TypeError(f"R2 complete() takes the list of parts uploadPart returned ({{partNumber, etag}} each), "
                        f"got {_describe(parts)}")
    listed = []
    for part in parts:
        if not isinstance(part, Mapping) or not isinstance(part.get("partNumber"), int) \
                or not isinstance(part.get("etag"), str):
            raise TypeError(f"R2 complete(): each part is a {{partNumber, etag}} dict as uploadPart returned it, "
                            f"got {_describe(part)}")
        listed.append((part["partNumber"], part["etag"]))
    numbers = [number for number, _ in listed]
    if len(set(numbers)) != len(numbers):
        raise R2Error("completeMultipartUpload", "There was a problem with the multipart upload: a part number is "
                                                 "listed twice.", 10025)
    return sorted(listed)


def _chosen_part(stored: dict[int, _Part], number: int, etag: str) -> _Part:
    part = stored.get(number)
    if part is None or part.etag != etag.strip('"'):
        raise R2Error("completeMultipartUpload", f"One or more of the specified parts could not be found (part "
                                                 f"{number} with etag {etag!r}).", 10025)
    return part


def _check_part_sizes(parts: list[_Part]) -> None:
    leading = parts[:-1]
    for part in leading:
        if part.size < MIN_PART_BYTES:
            raise R2Error("completeMultipartUpload", f"Your proposed upload is smaller than the minimum allowed "
                                                     f"object size: part {part.part_number} is {part.size} bytes; "
                                                     f"every part but the last needs {MIN_PART_BYTES}.", 10011)
    if len({part.size for part in leading}) > 1:
        raise R2Error("completeMultipartUpload", "There was a problem with the multipart upload: all non-trailing "
                                                 "parts must have the same length.", 10048)


async def _received(operation: str, value: Any, path: Path, expected: tuple[str, bytes] | None) -> _IncomingFile:
    """`value` written to the incoming file at `path` and hashed; refused (and the file removed) if it is too
    large or does not match the checksum the Worker gave."""
    hash_names = (expected[0],) if expected is not None and expected[0] != "md5" else ()
    incoming = await to_thread(_IncomingFile, path, hash_names)
    try:
        if value is not None:
            await _receive(operation, value, incoming)
        await to_thread(incoming.finish)
        if expected is not None and incoming.hashes[expected[0]].digest() != expected[1]:
            name = {"md5": "Content-MD5"}.get(expected[0], expected[0].upper().replace("SHA", "SHA-"))
            raise R2Error(operation, f"The {name} you specified did not match what we received.", 10037)
    except BaseException:
        incoming.discard()
        raise
    return incoming


# --- checking what the Worker passed --------------------------------------------------------------

def _options(call: str, options: Any, keywords: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The JS options object: a dict in the options position, then keyword arguments; None means unset."""
    if options is not None and (not isinstance(options, Mapping) or isinstance(options, Headers)):
        raise TypeError(f"R2 {call}() options must be a dict or None, got {_describe(options)}")
    merged = {**(options or {}), **{name: value for name, value in keywords.items() if value is not None}}
    unknown = [name for name in merged if name not in allowed]
    if unknown:
        raise TypeError(f"R2 {call}() has no option {unknown[0]!r}; its options are {', '.join(allowed) or 'none'}")
    return {name: value for name, value in merged.items() if value is not None}


def _check_key(operation: str, key: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"R2 {operation}() key must be a string, got {_describe(key)}")
    try:
        length = len(key.encode())
    except UnicodeEncodeError:
        raise TypeError(f"R2 {operation}() key {key!r} is not valid Unicode (it holds a lone surrogate)") from None
    if length > MAX_KEY_BYTES:
        raise R2Error(operation, f"The specified object name is not valid: its UTF-8 form is {length} bytes, "
                                 f"over R2's {MAX_KEY_BYTES}.", 10020)


def _http_metadata_in(operation: str, given: Any) -> str:
    """httpMetadata as stored: JSON with cacheExpiry in epoch milliseconds."""
    if given is None:
        return "{}"
    if isinstance(given, Headers):
        by_header = {header: name for name, header in HTTP_FIELDS.items()}
        given = {by_header[header]: value for header, value in given.items() if header in by_header}
        if "cacheExpiry" in given:
            given["cacheExpiry"] = _http_date(given["cacheExpiry"])
    if not isinstance(given, Mapping):
        raise TypeError(f"R2 {operation}() httpMetadata must be a dict or a Headers, got {_describe(given)}")
    stored: dict[str, Any] = {}
    for name, value in given.items():
        if name not in HTTP_FIELDS:
            raise TypeError(f"R2 {operation}() httpMetadata has no field {name!r}; its fields are "
                            f"{', '.join(HTTP_FIELDS)}")
        if name == "cacheExpiry":
            stored[name] = _epoch_ms(operation, "httpMetadata.cacheExpiry", value)
        elif not isinstance(value, str):
            raise TypeError(f"R2 {operation}() httpMetadata.{name} must be a string, got {_describe(value)}")
        else:
            stored[name] = value
    return json.dumps(stored)


def _custom_metadata_in(operation: str, given: dict[str, Any]) -> str:
    custom = given.get("customMetadata", {})
    if not isinstance(custom, Mapping) or not all(isinstance(item, str) for pair in custom.items() for item in pair):
        raise TypeError(f"R2 {operation}() customMetadata must be a dict of strings to strings, got "
                        f"{_describe(custom)}")
    size = sum(len(name.encode()) + len(value.encode()) for name, value in custom.items())
    if size > MAX_CUSTOM_METADATA_BYTES:
        raise R2Error(operation, f"Your metadata headers exceed the maximum allowed metadata size: {size} bytes, "
                                 f"over {MAX_CUSTOM_METADATA_BYTES}.", 10012)
    return json.dumps(dict(custom))


def _storage_class(operation: str, given: Any) -> str:
    if given is None:
        return "Standard"
    if given not in STORAGE_CLASSES:
        raise TypeError(f"R2 {operation}() storageClass must be one of {', '.join(STORAGE_CLASSES)}, got "
                        f"{_describe(given)}")
    return given


def _expected_hash(given: dict[str, Any]) -> tuple[str, bytes] | None:
    named = [name for name in HASHES if name in given]
    if len(named) > 1:
        raise TypeError(f"R2 put(): You cannot specify multiple hashing algorithms (got {', '.join(named)}).")
    if not named:
        return None
    name, value = named[0], given[named[0]]
    try:
        digest = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    except (TypeError, ValueError):
        digest = b""
    if len(digest) != HASHES[name] or isinstance(value, (int, list)):
        raise TypeError(f"R2 put() {name} must be {HASHES[name]} bytes or {2 * HASHES[name]} hex digits, got "
                        f"{_describe(value)}")
    return name, digest


def _epoch_ms(operation: str, option: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            pass
    if not isinstance(value, datetime):
        raise TypeError(f"R2 {operation}() {option} must be a datetime (or an ISO 8601 string), got "
                        f"{_describe(value)}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _http_date(text: str) -> datetime:
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise TypeError(f"R2: {text!r} is not an HTTP date (such as 'Wed, 21 Oct 2015 07:28:00 GMT')") from None


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _always(_: _Row | None) -> bool:
    return True


@dataclass(frozen=True)
class _Condition:
    """`onlyIf`, as R2 tests it (miniflare's `_testR2Conditional`): etags, then upload times."""

    etag_matches: tuple[str, ...] | None = None
    etag_does_not_match: tuple[str, ...] | None = None
    uploaded_before_ms: int | None = None
    uploaded_after_ms: int | None = None
    seconds_granularity: bool = False

    def admits(self, row: _Row | None) -> bool:
        if row is None:
            return self.etag_matches is None and self.uploaded_after_ms is None
        if_match = self.etag_matches is None or _matches(row.etag, self.etag_matches)
        if_none_match = self.etag_does_not_match is None or not _matches(row.etag, self.etag_does_not_match)
        uploaded = self._truncated(row.uploaded_ms)
        modified_since = self.uploaded_after_ms is None or self._truncated(self.uploaded_after_ms) < uploaded \
            or (self.etag_does_not_match is not None and if_none_match)
        unmodified_since = self.uploaded_before_ms is None or uploaded < self._truncated(self.uploaded_before_ms) \
            or (self.etag_matches is not None and if_match)
        return if_match and if_none_match and modified_since and unmodified_since

    def _truncated(self, ms: int) -> int:
        return ms - ms % 1000 if self.seconds_granularity else ms


def _matches(etag: str, etags: tuple[str, ...]) -> bool:
    return any(candidate in ("*", etag) for candidate in etags)


def _condition(operation: str, given: Any) -> _Condition | None:
    if given is None:
        return None
    if isinstance(given, Headers):
        return _header_condition(operation, given)
    if not isinstance(given, Mapping):
        raise TypeError(f"R2 {operation}() onlyIf must be a dict ({', '.join(CONDITIONS)}) or a Headers, got "
                        f"{_describe(given)}")
    unknown = [name for name in given if name not in CONDITIONS]
    if unknown:
        raise TypeError(f"R2 {operation}() onlyIf has no field {unknown[0]!r}; its fields are {', '.join(CONDITIONS)}")
    return _Condition(
        etag_matches=_etags(operation, given.get("etagMatches")),
        etag_does_not_match=_etags(operation, given.get("etagDoesNotMatch")),
        uploaded_before_ms=_optional_ms(operation, "onlyIf.uploadedBefore", given.get("uploadedBefore")),
        uploaded_after_ms=_optional_ms(operation, "onlyIf.uploadedAfter", given.get("uploadedAfter")),
        seconds_granularity=bool(given.get("secondsGranularity", False)))


def _header_condition(operation: str, headers: Headers) -> _Condition | None:
    """If-Match, If-None-Match, If-Modified-Since and If-Unmodified-Since, at HTTP's one-second granularity."""
    def etags(name: str) -> tuple[str, ...] | None:
        value = headers.get(name)
        return None if value is None else _etags(operation, value.split(","))

    def date_ms(name: str) -> int | None:
        value = headers.get(name)
        return None if value is None else _epoch_ms(operation, name, _http_date(value))

    return _Condition(etags("if-match"), etags("if-none-match"), date_ms("if-unmodified-since"),
                      date_ms("if-modified-since"), seconds_granularity=True)


def _etags(operation: str, given: Any) -> tuple[str, ...] | None:
    if given is None:
        return None
    values = [given] if isinstance(given, str) else given
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise TypeError(f"R2 {operation}() onlyIf etags must be a string or a list of strings, got {_describe(given)}")
    return tuple(value.strip().removeprefix("W/").strip('"') for value in values)


def _optional_ms(operation: str, option: str, value: Any) -> int | None:
    return None if value is None else _epoch_ms(operation, option, value)


@dataclass(frozen=True)
class _Range:
    offset: int | None = None
    length: int | None = None
    suffix: int | None = None

    def resolve(self, size: int) -> tuple[int, int]:
        """(offset, length) within an object of `size` bytes; R2 refuses a start past the end."""
        if self.suffix is not None:
            length = min(self.suffix, size)
            return size - length, length
        offset = self.offset or 0
        if offset >= size and (offset > 0 or size > 0):
            raise R2RangeError("get", f"The requested range is not satisfiable: offset {offset} is at or past the "
                                      f"end of the {size}-byte object.", 10039)
        available = size - offset
        return offset, available if self.length is None else min(self.length, available)


def _range(operation: str, given: Any) -> _Range | None:
    if given is None:
        return None
    if isinstance(given, Headers):
        return _header_range(operation, given.get("range"))
    if not isinstance(given, Mapping):
        raise TypeError(f"R2 {operation}() range must be a dict ({{offset, length}} or {{suffix}}) or a Headers, "
                        f"got {_describe(given)}")
    unknown = [name for name in given if name not in ("offset", "length", "suffix")]
    if unknown:
        raise TypeError(f"R2 {operation}() range has no field {unknown[0]!r}; its fields are offset, length, suffix")
    numbers = {name: _range_number(operation, name, value) for name, value in given.items() if value is not None}
    if not numbers:
        raise R2RangeError(operation, "Invalid range: give offset, length, or suffix.")
    if "suffix" in numbers and len(numbers) > 1:
        raise R2RangeError(operation, "Invalid range: suffix is incompatible with offset and length.")
    return _Range(**numbers)


def _range_number(operation: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise R2RangeError(operation, f"Invalid range: {name} must be a whole number, got {value!r}.")
    if value < 0:
        raise R2RangeError(operation, f"Invalid range: {name} ({value}) must be greater than or equal to 0.")
    return int(value)


def _header_range(operation: str, value: str | None) -> _Range | None:
    if value is None:
        return None
    matched = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if matched is None or matched.group(1) == matched.group(2) == "":
        raise R2RangeError(operation, f"Invalid range: R2 serves one range such as 'bytes=0-99', got {value!r}.")
    first, last = matched.groups()
    if first == "":
        return _Range(suffix=int(last))
    if last != "" and int(last) < int(first):
        raise R2RangeError(operation, f"Invalid range: {value!r} ends before it starts.")
    return _Range(offset=int(first), length=None if last == "" else int(last) - int(first) + 1)


def _list_text(option: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"R2 list() {option} must be a string, got {_describe(value)}")
    return value


def _list_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or math.isnan(limit):
        raise TypeError(f"R2 list() limit must be a number, got {_describe(limit)}")
    if limit < 1:
        raise R2Error("list", f"MaxKeys params must be positive: limit is {limit}.", 10022)
    if limit > MAX_LIST_LIMIT:
        raise R2Error("list", f"MaxKeys params must be less than or equal to {MAX_LIST_LIMIT}: limit is {limit}.",
                      10022)
    return int(limit)


def _includes(given: Any) -> tuple[str, ...]:
    if not isinstance(given, list) or any(name not in INCLUDES for name in given):
        raise TypeError(f"R2 list() include must be a list of {' and '.join(INCLUDES)}, got {_describe(given)}")
    return tuple(given)


def _cursor(entry: _Row | str) -> str:
    """Where the next page starts: after the last object, or past every key under the last delimited prefix."""
    position = [entry.key, False] if isinstance(entry, _Row) else [_prefix_end(entry) or "", True]
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def _cursor_position(cursor: Any) -> tuple[str, bool]:
    position = _decoded_cursor(cursor) if isinstance(cursor, str) else None
    if position is None:
        raise R2Error("list", f"Invalid cursor {cursor!r}: pass the cursor of the previous list() result unchanged.")
    return position


def _decoded_cursor(cursor: str) -> tuple[str, bool] | None:
    try:
        key, inclusive = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        return None
    return (key, inclusive) if isinstance(key, str) and isinstance(inclusive, bool) else None


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]
