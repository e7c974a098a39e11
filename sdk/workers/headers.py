"""HTTP headers with both the Python (Mapping, ``get_all``) and the JS (``has``/``set``/``append``) API."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Union

HeadersInit = Union["Headers", Mapping[str, str], Iterable[tuple[str, str]], None]

_SET_COOKIE = "set-cookie"


class Headers(Mapping[str, str]):
    """Case-insensitive headers; repeated names are comma-joined, except Set-Cookie, as on Cloudflare."""

    __slots__ = ("_values", "_names")

    def __init__(self, init: HeadersInit = None) -> None:
        self._values: dict[str, list[str]] = {}
        self._names: dict[str, str] = {}
        if init is None:
            return
        # A Headers' own items() comma-joins Set-Cookie; copy its wire lines to keep cookies apart.
        pairs = init.raw_items() if isinstance(init, Headers) else init.items() if isinstance(init, Mapping) else init
        for name, value in pairs:
            self.append(name, value)

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Build from ASGI's ``[(b"name", b"value")]`` list (names already lower-case)."""
        headers = cls()
        values, names = headers._values, headers._names
        for raw_name, raw_value in raw:
            key, value = raw_name.decode("latin-1"), raw_value.decode("latin-1").strip()
            existing = values.get(key)
            if existing is None:
                values[key] = [value]
                names[key] = key
            elif key == _SET_COOKIE:
                existing.append(value)
            else:
                existing[0] = f"{existing[0]}, {value}"
        return headers

    @classmethod
    def new(cls, init: HeadersInit = None) -> Headers:
        """JS spelling: ``Headers.new({...})``."""
        return cls(init)

    def append(self, name: str, value: str) -> None:
        key = name.lower()
        value = str(value).strip()
        values = self._values.get(key)
        if values is None:
            self._values[key] = [value]
            self._names[key] = name
        elif key == _SET_COOKIE:
            values.append(value)
        else:
            values[0] = f"{values[0]}, {value}"

    def put_lower(self, key: str, value: str) -> None:
        """``set`` for a name already lower-case and a clean value (the runtime's hot path)."""
        self._values[key] = [value]
        self._names[key] = key

    def set(self, name: str, value: str) -> None:
        key = name.lower()
        self._values[key] = [str(value).strip()]
        self._names[key] = name

    def delete(self, name: str) -> None:
        key = name.lower()
        self._values.pop(key, None)
        self._names.pop(key, None)

    def has(self, name: str) -> bool:
        return name.lower() in self._values

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        values = self._values.get(name.lower())
        return default if values is None else ", ".join(values)

    def get_all(self, name: str, default: list[str] | None = None) -> list[str] | None:
        values = self._values.get(name.lower())
        return default if values is None else list(values)

    def getSetCookie(self) -> list[str]:  # noqa: N802 - JS name
        return list(self._values.get(_SET_COOKIE, ()))

    def raw_items(self) -> list[tuple[str, str]]:
        """Every header line as it goes on the wire (Set-Cookie values on their own lines)."""
        return [(key, value) for key, values in self._values.items() for value in values]

    def copy(self) -> Headers:
        clone = Headers()
        clone._values = {key: list(values) for key, values in self._values.items()}
        clone._names = dict(self._names)
        return clone

    def __getitem__(self, name: str) -> str | None:  # type: ignore[override]
        # http.client.HTTPMessage returns None for a missing name; the SDK's headers subclass it.
        return self.get(name)

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        self.delete(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Headers({self.raw_items()!r})"
