"""The body shared by ``Request`` and ``Response``: read once, as bytes, text, JSON, form or a stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Union

from ._jsdict import JsDict, to_jsdict
from .formdata import Blob, FormData, parse_form
from .headers import Headers

BodySource = Union[bytes, AsyncIterable[bytes], None]
BodyInit = Union[str, bytes, bytearray, memoryview, FormData, Blob, AsyncIterable[bytes], None]


class BodyStream:
    """An async iterable of byte chunks; also offers JS's ``getReader()`` that some Worker code probes for."""

    def __init__(self, source: AsyncIterable[bytes] | bytes, owner: Body | None = None) -> None:
        self._source = source
        self._owner = owner

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._owner is not None:
            if self._owner._body_used:
                raise OSError("Body already used")
            self._owner._body_used = True
        return _iterate(self._source)

    def getReader(self) -> _Reader:  # noqa: N802 - JS name
        return _Reader(self.__aiter__())


class _Reader:
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def read(self) -> JsDict:
        try:
            return JsDict(done=False, value=await self._chunks.__anext__())
        except StopAsyncIteration:
            return JsDict(done=True, value=None)

    async def cancel(self, reason: Any = None) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()

    def releaseLock(self) -> None:  # noqa: N802 - JS name
        pass


async def _iterate(source: AsyncIterable[bytes] | bytes) -> AsyncIterator[bytes]:
    if isinstance(source, bytes):
        if source:
            yield source
        return
    chunks = aiter(source)
    try:
        async for chunk in chunks:
            if isinstance(chunk, str):
                chunk = chunk.encode()
            if chunk:
                yield bytes(chunk)
    finally:
        # A reader that stops early (client gone) must release the producer now, not at garbage collection.
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


def encode_body(body: BodyInit, headers: Headers, owner: str) -> BodySource:
    """Normalise a body init value, setting the content-type the JS constructors would set."""
    if body is None:
        return None
    if isinstance(body, str):
        _default_type(headers, "text/plain;charset=UTF-8")
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, FormData):
        data, content_type = body.encode()
        _default_type(headers, content_type)
        return data
    if isinstance(body, Blob):
        if body.type:
            _default_type(headers, body.type)
        return body._data
    if isinstance(body, BodyStream):
        return body._source
    if isinstance(body, AsyncIterable):
        return body
    if isinstance(body, Iterable) and not isinstance(body, (dict, list, tuple, set)):
        raise TypeError(f"Unsupported type in {owner}: {type(body).__name__} (use an async iterator for streams)")
    raise TypeError(f"Unsupported type in {owner}: {type(body).__name__}")


def _default_type(headers: Headers, content_type: str) -> None:
    if "content-type" not in headers:
        headers.put_lower("content-type", content_type)


class Body:
    """Mixin: subclasses set ``_body``, ``_body_used`` and ``headers``."""

    _body: BodySource
    _body_used: bool
    headers: Headers

    @property
    def body(self) -> BodyStream | None:
        return None if self._body is None else BodyStream(self._body, self)

    @property
    def body_used(self) -> bool:
        return self._body_used

    bodyUsed = body_used  # noqa: N815 - JS name

    async def bytes(self) -> bytes:
        if self._body_used:
            raise OSError("Body already used")
        self._body_used = True
        source = self._body
        if source is None or isinstance(source, bytes):
            return source or b""
        return b"".join([chunk async for chunk in _iterate(source)])

    async def text(self) -> str:
        # JS's UTF-8 decode: a leading BOM is dropped and bad bytes become U+FFFD instead of raising.
        return (await self.bytes()).decode("utf-8-sig", errors="replace")

    async def json(self, **kwargs: Any) -> Any:
        # Dicts come back attribute-capable so both `data["name"]` and the docs' `data.name` work.
        return to_jsdict(json.loads(await self.text(), **kwargs))

    async def buffer(self) -> bytes:
        return await self.bytes()

    arrayBuffer = buffer  # noqa: N815 - JS name

    async def memoryview(self) -> memoryview:
        return memoryview(await self.bytes())

    async def blob(self) -> Blob:
        return Blob([await self.bytes()], type=self.headers.get("content-type") or "")

    async def form_data(self) -> FormData:
        return parse_form(await self.bytes(), self.headers.get("content-type") or "")

    formData = form_data  # noqa: N815 - JS name

    def _iter_bytes(self) -> AsyncIterator[bytes]:
        """The runtime's reader: the chunks to put on the wire (marks the body used)."""
        if self._body_used:
            raise OSError("Body already used")
        self._body_used = True
        return _iterate(self._body if self._body is not None else b"")
