"""``Blob``, ``File`` and ``FormData``: the body types Workers pass around, with multipart encoding."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator
from email.parser import BytesParser
from email.policy import HTTP
from typing import Union
from urllib.parse import parse_qsl

BlobPart = Union[str, bytes, bytearray, memoryview, "Blob"]


def _part_bytes(part: BlobPart) -> bytes:
    if isinstance(part, Blob):
        return part._data
    if isinstance(part, str):
        return part.encode()
    return bytes(part)


class Blob:
    """Immutable bytes with a MIME type: ``Blob(parts, content_type)`` as the Python SDK writes it, or
    ``Blob(parts, type=...)`` as JS does. A single Blob given alone passes on its type."""

    def __init__(self, parts: Iterable[BlobPart] | BlobPart = (), type: str = "", *,
                 content_type: str | None = None, endings: str | None = None) -> None:
        if isinstance(parts, (str, bytes, bytearray, memoryview, Blob)):
            if isinstance(parts, Blob) and not type and content_type is None:
                type = parts.type
            parts = [parts]
        native = _native_endings(endings)
        self._data = b"".join(_part_bytes(_native_text(part) if native else part) for part in parts)
        self.type = type if content_type is None else content_type

    @property
    def content_type(self) -> str:
        return self.type

    @property
    def size(self) -> int:
        return len(self._data)

    async def bytes(self) -> bytes:
        return self._data

    async def text(self) -> str:
        return self._data.decode()

    async def arrayBuffer(self) -> bytes:  # noqa: N802 - JS name
        return self._data

    def slice(self, start: int = 0, end: int | None = None, type: str = "", *,
              content_type: str | None = None) -> Blob:
        return Blob(self._data[start:end], type=type if content_type is None else content_type)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, type={self.type!r})"


def _native_endings(endings: str | None) -> bool:
    """Whether text parts get this system's line endings (``"native"``) or stay as written (``"transparent"``)."""
    if endings not in (None, "transparent", "native"):
        raise TypeError(f"endings must be 'transparent' or 'native', got {endings!r}")
    return endings == "native"


def _native_text(part: BlobPart) -> BlobPart:
    return part.replace("\r\n", "\n").replace("\r", "\n") if isinstance(part, str) else part


class File(Blob):
    """A Blob with a file name (what multipart uploads become) and a modification time in ms."""

    def __init__(self, parts: Iterable[BlobPart] | BlobPart, name: str, type: str = "", *,
                 content_type: str | None = None, endings: str | None = None,
                 last_modified: int | None = None) -> None:
        super().__init__(parts, type=type, content_type=content_type, endings=endings)
        self.name = name
        if last_modified is None:
            last_modified = parts.last_modified if isinstance(parts, File) else time.time_ns() // 1_000_000
        self.last_modified = last_modified

    @property
    def lastModified(self) -> int:  # noqa: N802 - JS name
        return self.last_modified


FormDataValue = Union[str, Blob]


class FormData:
    """Ordered multi-map of form fields; values are ``str`` or ``File``."""

    def __init__(self, init: dict[str, FormDataValue] | Iterable[tuple[str, FormDataValue]] | None = None) -> None:
        self._fields: list[tuple[str, FormDataValue]] = []
        pairs = init.items() if isinstance(init, dict) else (init or ())
        for name, value in pairs:
            self.append(name, value)

    @classmethod
    def new(cls) -> FormData:
        return cls()

    def append(self, name: str, value: FormDataValue, filename: str | None = None) -> None:
        if isinstance(value, Blob) and filename is not None:
            value = File([value], filename, type=value.type)
        elif not isinstance(value, Blob):
            value = str(value)
        self._fields.append((name, value))

    def set(self, name: str, value: FormDataValue, filename: str | None = None) -> None:
        self.delete(name)
        self.append(name, value, filename)

    def get(self, name: str) -> FormDataValue | None:
        return next((value for key, value in self._fields if key == name), None)

    def get_all(self, name: str) -> list[FormDataValue]:
        return [value for key, value in self._fields if key == name]

    getAll = get_all  # noqa: N815 - JS name

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self._fields)

    def delete(self, name: str) -> None:
        self._fields = [(key, value) for key, value in self._fields if key != name]

    def items(self) -> Iterator[tuple[str, FormDataValue]]:
        return iter(list(self._fields))

    entries = items

    def keys(self) -> Iterator[str]:
        return (key for key, _ in self._fields)

    def values(self) -> Iterator[FormDataValue]:
        return (value for _, value in self._fields)

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    # The Python SDK's mapping face: form["k"] (None when absent, as there), form["k"] = v, del form["k"].
    def __getitem__(self, name: str) -> FormDataValue | None:
        return self.get(name)

    def __setitem__(self, name: str, value: FormDataValue) -> None:
        if isinstance(value, list):
            raise TypeError("Expected single item in arguments to FormData.__setitem__")
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        self.delete(name)

    def __len__(self) -> int:
        return len(self._fields)

    def encode(self) -> tuple[bytes, str]:
        """The multipart/form-data body and its content-type (with boundary)."""
        boundary = "----edgewise" + secrets.token_hex(12)
        chunks: list[bytes] = []
        for name, value in self._fields:
            chunks.append(_multipart_head(boundary, name, value))
            chunks.append(value._data if isinstance(value, Blob) else value.encode())
            chunks.append(b"\r\n")
        chunks.append(f"--{boundary}--\r\n".encode())
        return b"".join(chunks), f"multipart/form-data; boundary={boundary}"

    def __repr__(self) -> str:
        return f"FormData({self._fields!r})"


def _multipart_head(boundary: str, name: str, value: FormDataValue) -> bytes:
    disposition = f'form-data; name="{name}"'
    lines = [f"--{boundary}"]
    if isinstance(value, File):
        disposition += f'; filename="{value.name}"'
    lines.append(f"Content-Disposition: {disposition}")
    if isinstance(value, Blob):
        lines.append(f"Content-Type: {value.type or 'application/octet-stream'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_form(body: bytes, content_type: str) -> FormData:
    """Decode an urlencoded or multipart body; anything else is a TypeError, like the JS API."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        return FormData(parse_qsl(body.decode(), keep_blank_values=True))
    if media_type == "multipart/form-data":
        return _parse_multipart(body, content_type)
    raise TypeError(f"Can't parse a {media_type or 'body without content-type'} body as form data")


def _parse_multipart(body: bytes, content_type: str) -> FormData:
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    form = FormData()
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is None:
            form.append(name, payload.decode(part.get_content_charset() or "utf-8"))
        else:
            form.append(name, File([payload], filename, type=part.get_content_type()))
    return form


