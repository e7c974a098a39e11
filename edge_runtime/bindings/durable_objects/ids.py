"""Durable Object ids: 64 hex digits, the last 8 a tag of their namespace and the one before it the jurisdiction.

The tag lets ``idFromString`` refuse an id of another class, as Cloudflare does; names hash to the same
id on every run, so ``idFromName("room")`` reaches the same object (and its stored data) after a restart.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from .migrations import ObjectClass

ID_HEX_DIGITS = 64
_TAG_HEX_DIGITS = 8
_BODY_HEX_DIGITS = ID_HEX_DIGITS - _TAG_HEX_DIGITS - 1
JURISDICTIONS = {"": "0", "eu": "1", "fedramp": "2"}
_JURISDICTION_OF_DIGIT = {digit: name or None for name, digit in JURISDICTIONS.items()}
_HEX = frozenset("0123456789abcdef")


class DurableObjectId:
    """``toString()``, ``equals(other)``, and ``name`` for ids made by ``idFromName``."""

    __slots__ = ("_hex", "name", "jurisdiction")

    def __init__(self, hex_id: str, name: str | None = None, jurisdiction: str | None = None) -> None:
        self._hex, self.name, self.jurisdiction = hex_id, name, jurisdiction

    def toString(self) -> str:  # noqa: N802 - Cloudflare's name
        return self._hex

    def equals(self, other: Any) -> bool:
        return isinstance(other, DurableObjectId) and other._hex == self._hex

    __str__ = toString

    def __eq__(self, other: object) -> bool:
        return self.equals(other)

    def __hash__(self) -> int:
        return hash(self._hex)

    def __repr__(self) -> str:
        return f"DurableObjectId({self._hex!r}{'' if self.name is None else f', name={self.name!r}'})"


def checked_jurisdiction(jurisdiction: Any) -> str:
    if not jurisdiction or jurisdiction not in JURISDICTIONS:
        names = ", ".join(repr(name) for name in JURISDICTIONS if name)
        raise TypeError(f"Unknown jurisdiction {jurisdiction!r}: Durable Objects support {names}")
    return jurisdiction


def id_from_name(object_class: ObjectClass, name: str, jurisdiction: str | None) -> DurableObjectId:
    if not isinstance(name, str):
        raise TypeError(f"idFromName() needs a string name, got {type(name).__name__}")
    seed = f"{object_class.namespace_key}\0{jurisdiction or ''}\0{name}"
    return _make(object_class, hashlib.sha256(seed.encode()).hexdigest(), jurisdiction, name)


def new_unique_id(object_class: ObjectClass, jurisdiction: str | None) -> DurableObjectId:
    return _make(object_class, secrets.token_hex(ID_HEX_DIGITS // 2), jurisdiction, None)


def id_from_string(object_class: ObjectClass, hex_id: Any) -> DurableObjectId:
    if not isinstance(hex_id, str) or len(hex_id) != ID_HEX_DIGITS or not set(hex_id.lower()) <= _HEX:
        raise TypeError(f"Invalid Durable Object ID: {hex_id!r} is not {ID_HEX_DIGITS} hex digits "
                        "(pass a string that id.toString() made)")
    hex_id = hex_id.lower()
    check_owned(object_class, hex_id)
    return DurableObjectId(hex_id, None, _JURISDICTION_OF_DIGIT[hex_id[_BODY_HEX_DIGITS]])


def check_owned(object_class: ObjectClass, hex_id: str) -> None:
    body, tag = hex_id[:-_TAG_HEX_DIGITS], hex_id[-_TAG_HEX_DIGITS:]
    if _tag(object_class, body) != tag or body[-1] not in _JURISDICTION_OF_DIGIT:
        raise TypeError(f"Invalid Durable Object ID: {hex_id} was not made by this namespace (class "
                        f"{object_class.class_name} of Worker {object_class.script_name}); the ids of one "
                        "Durable Object class cannot be used with another")


def _tag(object_class: ObjectClass, body: str) -> str:
    return hashlib.sha256(f"{object_class.namespace_key}\0{body}".encode()).hexdigest()[:_TAG_HEX_DIGITS]


def _make(object_class: ObjectClass, digits: str, jurisdiction: str | None, name: str | None) -> DurableObjectId:
    body = digits[:_BODY_HEX_DIGITS] + JURISDICTIONS[jurisdiction or ""]
    return DurableObjectId(body + _tag(object_class, body), name, jurisdiction)
