"""R2 bodies in and out, and the objects a Worker gets back: a put's value streamed into an incoming
file and hashed as it goes; `R2Object`, `R2ObjectBody` (its blob read back in 64 KiB chunks) and
`R2Checksums`. Neither side holds a body in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from asyncio import to_thread
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import IO, Any

from edgewise_sdk.workers import Blob, Body, BodyStream, JsDict, to_jsdict

from .r2_options import HASHES, HTTP_FIELDS, INCLUDES, MAX_PUT_BYTES, R2Error, describe
from .r2_store import WRITE_BATCH_BYTES, ObjectRow, unlink_files

STREAM_CHUNK_BYTES = 64 * 1024


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
        unlink_files(self.path)


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
                        f"(such as request.body), got {describe(value)}")
    chunks = aiter(value)
    try:
        async for chunk in chunks:
            if isinstance(chunk, str):
                chunk = chunk.encode()
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"R2 {operation}() stream gave {describe(chunk)}; a body stream gives bytes")
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


async def received(operation: str, value: Any, path: Path, expected: tuple[str, bytes] | None) -> _IncomingFile:
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


def r2_object(row: ObjectRow, kind: type[R2Object] = R2Object, include: tuple[str, ...] = INCLUDES,
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
