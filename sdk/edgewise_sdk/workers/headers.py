"""HTTP headers with both the Python (Mapping, ``get_all``) and the JS (``has``/``set``/``append``) API."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Union

HeadersInit = Union["Headers", Mapping[str, str], Iterable[tuple[str, str]], None]

_SET_COOKIE = "set-cookie"


class Headers(Mapping[str, str]):
    """Case-insensitive headers; repeated names are comma-joined, except Set-Cookie, as on Cloudflare.

    ``_values`` maps each lower-case name to its (joined) value; Set-Cookie lines are also kept
    one by one in ``_cookies``, since a comma can't separate them.
    """

    __slots__ = ("_values", "_cookies")

    def __init__(self, init: HeadersInit = None) -> None:
        self._values: dict[str, str] = {}
        self._cookies: list[str] = []
        if init is None:
            return
        # A Headers' own items() comma-joins Set-Cookie; copy its wire lines to keep cookies apart.
        if type(init) is dict:  # the common case, without the ABC checks below
            pairs = init.items()
        else:
            pairs = init.raw_items() if isinstance(init, Headers) else init.items() if isinstance(init, Mapping) else init
        for name, value in pairs:
            self.append(name, value)

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Build from ASGI's ``[(b"name", b"value")]`` list (names already lower-case)."""
        headers = cls()
        values = headers._values
        for raw_name, raw_value in raw:
            key, value = raw_name.decode("latin-1"), raw_value.decode("latin-1").strip()
            if key in values:
                headers._join(key, value)
            else:
                values[key] = value
                if key == _SET_COOKIE:
                    headers._cookies.append(value)
        return headers

    @classmethod
    def new(cls, init: HeadersInit = None) -> Headers:
        """JS spelling: ``Headers.new({...})``."""
        return cls(init)

    def append(self, name: str, value: str) -> None:
        key = name.lower()
        value = str(value).strip()
        if key in self._values:
            self._join(key, value)
        else:
            self.set(key, value)

    def _join(self, key: str, value: str) -> None:
        self._values[key] = f"{self._values[key]}, {value}"
        if key == _SET_COOKIE:
            self._cookies.append(value)

    def put_lower(self, key: str, value: str) -> None:
        """``set`` for a name already lower-case and a clean value (the runtime's hot path)."""
        self._values[key] = value

    def update_lower(self, items: Mapping[str, str]) -> None:
        """Several ``put_lower`` at once; none of them may be Set-Cookie."""
        self._values.update(items)

    def set(self, name: str, value: str) -> None:
        key = name.lower()
        value = str(value).strip()
        self._values[key] = value
        if key == _SET_COOKIE:
            self._cookies = [value]

    def delete(self, name: str) -> None:
        key = name.lower()
        self._values.pop(key, None)
        if key == _SET_COOKIE:
            self._cookies = []

    def has(self, name: str) -> bool:
        return name.lower() in self._values

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._values.get(name.lower(), default)

    def get_all(self, name: str, default: list[str] | None = None) -> list[str] | None:
        key = name.lower()
        if key == _SET_COOKIE and self._cookies:
            return list(self._cookies)
        value = self._values.get(key)
        return default if value is None else [value]

    def getSetCookie(self) -> list[str]:  # noqa: N802 - JS name
        return list(self._cookies)

    def raw_items(self) -> list[tuple[str, str]]:
        """Every header line as it goes on the wire (Set-Cookie values on their own lines)."""
        if not self._cookies:
            return list(self._values.items())
        lines: list[tuple[str, str]] = []
        for key, value in self._values.items():
            if key == _SET_COOKIE:
                lines += [(key, cookie) for cookie in self._cookies]
            else:
                lines.append((key, value))
        return lines

    def copy(self) -> Headers:
        clone = Headers()
        clone._values = dict(self._values)
        clone._cookies = list(self._cookies)
        return clone

    def __getitem__(self, name: str) -> str | None:  # type: ignore[override]
        # http.client.HTTPMessage returns None for a missing name; the SDK's headers subclass it.
        return self._values.get(name.lower())

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
