"""``ctx.storage`` of one Durable Object: the KV API, transactions, the alarm, ``sql`` and the synchronous
``kv``, all kept in the object's one SQLite file (``sql.ObjectDatabase``).

Every call does its SQLite work synchronously, the ``async`` ones included, so awaiting a storage call
never lets another event of the object run in between: ``v = await s.get("n"); await s.put("n", v + 1)``
cannot interleave with another event's (Cloudflare's input gates give the same guarantee). Only a
``transaction()`` spans awaits; the object's other async storage calls wait for it to end.

Values are copied as structured clone copies them and stored as tagged JSON (``bytes`` at the top level
raw, ``sql.encode_value``), so they come back exactly: ``bytes`` stay ``bytes``, ``int`` stays ``int``,
dicts come back as ``JsDict``s (attribute access), as Python Workers receive them.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..sqlite_pool import prefix_end
from .sql import (
    SQL_NOT_ENABLED,
    ObjectDatabase,
    Savepoint,
    SqlError,
    SqlStorage,
    StorageLimits,
    StorageRangeError,
    decode_value,
    encode_value,
    stored_bytes,
)

SCHEMA = ("CREATE TABLE IF NOT EXISTS _cf_KV (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
          "CREATE TABLE IF NOT EXISTS _cf_METADATA (key INTEGER PRIMARY KEY, value)")
ALARM_ROW = 1  # the _cf_METADATA row holding the alarm, in ms since the epoch
READ_OPTIONS = frozenset({"allowConcurrency", "noCache"})
WRITE_OPTIONS = READ_OPTIONS | {"allowUnconfirmed"}
LIST_OPTIONS = READ_OPTIONS | {"start", "startAfter", "end", "prefix", "reverse", "limit"}
ALARM_OPTIONS = frozenset({"allowConcurrency", "allowUnconfirmed"})
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_NO_VALUE: Any = object()
T = TypeVar("T")


class TransactionError(RuntimeError):
    """A transaction used after it ended or was rolled back, or ``deleteAll()`` inside one."""


def _short(key: str) -> str:
    return repr(key) if len(key) <= 40 else repr(key[:40]) + "..."


def _check_options(call: str, options: Any, keywords: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """The options object, given as a dict, as keyword arguments or both; TypeError for unknown names."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"{call}() takes its options as a dict or keyword arguments, got {type(options).__name__}")
    merged = {**(options or {}), **keywords}
    unknown = sorted(set(merged) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise TypeError(f"{call}() has no option {unknown[0]!r} (its options: {known})")
    return merged


def _alarm_ms(scheduled_time: Any) -> int:
    """Milliseconds since the epoch for ``setAlarm``; a naive datetime is local time, as ``timestamp()`` reads it."""
    if isinstance(scheduled_time, datetime.datetime):
        aware = scheduled_time if scheduled_time.tzinfo else scheduled_time.astimezone()
        milliseconds = (aware - _EPOCH) // datetime.timedelta(milliseconds=1)
    elif isinstance(scheduled_time, (int, float)) and not isinstance(scheduled_time, bool) \
            and math.isfinite(scheduled_time):
        milliseconds = int(scheduled_time)
    else:
        raise TypeError("setAlarm() takes milliseconds since the epoch (int or float) or a datetime, "
                        f"got {type(scheduled_time).__name__} {scheduled_time!r}")
    if milliseconds <= 0:
        raise TypeError("setAlarm() cannot be called with an alarm time <= 0")
    return max(milliseconds, int(time.time() * 1000))  # a time in the past means now, as on Cloudflare


# --- the async API, shared by ctx.storage and a transaction's txn --------------------------------------

class _StorageOperations(ABC):
    """``get``, ``put``, ``delete``, ``list`` and the alarm calls, in Cloudflare's call shapes."""

    _core: DurableObjectStorage

    @abstractmethod
    async def _run(self, operation: Callable[[], T]) -> T:
        """Run one storage operation: at once on the object's database, or inside the open transaction."""

    async def get(self, keys: str | list[str], options: Any = None, /, **keywords: Any) -> Any:
        """One key's value (None when missing), or for a list of keys a dict of those found, in key order."""
        _check_options("get", options, keywords, READ_OPTIONS)
        return await self._run(lambda: self._core.read(keys))

    async def put(self, key_or_entries: str | Mapping[str, Any], value: Any = _NO_VALUE, options: Any = None,
                  /, **keywords: Any) -> None:
        """``put(key, value)`` or ``put({key: value, ...})`` (up to 128 keys), atomically."""
        if isinstance(key_or_entries, Mapping):
            if options is not None:
                raise TypeError("put(entries, options) takes no third argument")
            _check_options("put", None if value is _NO_VALUE else value, keywords, WRITE_OPTIONS)
            entries = self._core.entries(key_or_entries)
        else:
            if value is _NO_VALUE:
                raise TypeError("put() called with no value: pass put(key, value) or put({key: value, ...})")
            _check_options("put", options, keywords, WRITE_OPTIONS)
            entries = [self._core.entry(key_or_entries, value, "put")]
        await self._run(lambda: self._core.write(entries))

    async def delete(self, keys: str | list[str], options: Any = None, /, **keywords: Any) -> bool | int:
        """True if the key existed; for a list of keys, how many existed."""
        _check_options("delete", options, keywords, WRITE_OPTIONS)
        if isinstance(keys, str):
            self._core.check_key(keys, "delete")
            return await self._run(lambda: self._core.remove([keys]) == 1)
        checked = self._core.key_list(keys, "delete")
        return await self._run(lambda: self._core.remove(checked))

    async def list(self, options: Any = None, /, **keywords: Any) -> dict[str, Any]:
        """The entries in key order (``reverse``: descending) within ``prefix``/``start``/``startAfter``/``end``."""
        bounds = _check_options("list", options, keywords, LIST_OPTIONS)
        return await self._run(lambda: dict(self._core.scan(bounds, "list")))

    async def getAlarm(self, options: Any = None, /, **keywords: Any) -> int | None:  # noqa: N802
        """The alarm's time in ms since the epoch, or None."""
        _check_options("getAlarm", options, keywords, frozenset({"allowConcurrency"}))
        return await self._run(self._core.read_alarm)

    async def setAlarm(self, scheduled_time: Any, options: Any = None, /, **keywords: Any) -> None:  # noqa: N802
        """Sets the one alarm (ms since the epoch or a datetime; a past time means now), replacing any other."""
        _check_options("setAlarm", options, keywords, ALARM_OPTIONS)
        milliseconds = _alarm_ms(scheduled_time)
        await self._run(lambda: self._core.write_alarm(milliseconds))

    async def deleteAlarm(self, options: Any = None, /, **keywords: Any) -> None:  # noqa: N802
        _check_options("deleteAlarm", options, keywords, ALARM_OPTIONS)
        await self._run(lambda: self._core.write_alarm(None))


class DurableObjectTransaction(_StorageOperations):
    """The ``txn`` a ``transaction()`` closure receives: the same calls, plus ``rollback()``."""

    def __init__(self, core: DurableObjectStorage, savepoint: Savepoint) -> None:
        self._core, self._savepoint = core, savepoint
        self._ended: str | None = None  # why it can no longer be used

    async def _run(self, operation: Callable[[], T]) -> T:
        if self._ended:
            raise TransactionError(f"this transaction {self._ended}; use ctx.storage outside it")
        return operation()

    def rollback(self) -> None:
        """Undoes everything the transaction wrote; the closure's result is still returned."""
        if self._ended:
            raise TransactionError(f"this transaction {self._ended}; there is nothing to roll back")
        self._savepoint.rollback()
        self._ended = "was rolled back"

    async def deleteAll(self, options: Any = None, /, **keywords: Any) -> None:  # noqa: N802
        raise TransactionError("Cannot call deleteAll() within a transaction")


# --- ctx.storage ---------------------------------------------------------------------------------------

class DurableObjectStorage(_StorageOperations):
    """What a Durable Object sees as ``self.ctx.storage``; ``path`` is its SQLite file (created if missing).

    ``on_alarm_change(seconds_or_None)`` is called when a committed change sets, moves or deletes the
    alarm; ``alarm_at()`` gives the current one at any time (the scheduler reads it after opening).
    ``sqlite_backed=False`` (a ``new_classes`` class) refuses the SQLite-only APIs: ``sql``, ``kv``,
    ``transactionSync``.
    """

    def __init__(self, path: Path, *, on_alarm_change: Callable[[float | None], None] | None = None,
                 limits: StorageLimits = StorageLimits(), sqlite_backed: bool = True) -> None:
        self._core = self
        self.limits, self.sqlite_backed = limits, sqlite_backed
        self._database = ObjectDatabase(Path(path), limits)
        for statement in SCHEMA:
            self._database.internal(statement)
        self.sql = SqlStorage(self._database, enabled=sqlite_backed)
        self.kv = SyncKv(self)
        self._on_alarm_change = on_alarm_change
        self._alarm_ms = self.read_alarm()
        self._alarm_written = False  # an alarm write since the outermost scope began
        self._transaction_lock = asyncio.Lock()
        self._transaction_task: asyncio.Task[Any] | None = None

    def alarm_at(self) -> float | None:
        """The committed alarm, in seconds since the epoch, or None."""
        return None if self._alarm_ms is None else self._alarm_ms / 1000

    def close(self) -> None:
        """Closes the file (an open transaction is rolled back); later calls raise."""
        self._database.close()

    async def _run(self, operation: Callable[[], T]) -> T:
        holder = self._transaction_task
        if holder is not None and holder is not asyncio.current_task():
            async with self._transaction_lock:  # another event's transaction is open: wait for its end
                return operation()
        return operation()

    async def deleteAll(self, options: Any = None, /, **keywords: Any) -> None:  # noqa: N802
        """Deletes everything: the KV data, every SQL table and view, and the alarm (as from 2026-02-24)."""
        _check_options("deleteAll", options, keywords, WRITE_OPTIONS)
        await self._run(self.delete_everything)

    async def transaction(self, closure: Callable[[DurableObjectTransaction], Any], options: Any = None,
                          /, **keywords: Any) -> Any:
        """Runs ``closure(txn)`` (async or not) atomically: committed when it returns, rolled back if it raises."""
        _check_options("transaction", options, keywords, frozenset())
        task = asyncio.current_task()
        if self._transaction_task is task:  # nested in this event's own transaction
            return await self._transact(closure)
        async with self._transaction_lock:
            self._transaction_task = task
            try:
                return await self._transact(closure)
            finally:
                self._transaction_task = None

    def transactionSync(self, closure: Callable[[], T]) -> T:  # noqa: N802
        """Runs ``closure()`` atomically (SQLite-backed objects' synchronous transaction)."""
        self.require_sqlite("transactionSync()")
        with self.writing():
            result = closure()
            if inspect.isawaitable(result):
                getattr(result, "close", lambda: None)()
                raise TypeError("transactionSync() takes a plain function; use transaction() for an async one")
            return result

    async def sync(self) -> None:
        """Resolves when earlier writes are durable: they already are, each committed as it ran."""

    async def _transact(self, closure: Callable[[DurableObjectTransaction], Any]) -> Any:
        with self.writing() as savepoint:
            txn = DurableObjectTransaction(self, savepoint)
            try:
                result = closure(txn)
                return await result if inspect.isawaitable(result) else result
            finally:
                txn._ended = txn._ended or "has ended"

    # --- the synchronous work every call above does -------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[Savepoint]:
        """An atomic scope; when the outermost one ends, an alarm change it committed is announced."""
        try:
            with self._database.atomic() as savepoint:
                yield savepoint
        finally:
            if self._database.depth == 0 and self._alarm_written:
                self._alarm_written = False
                self._announce_alarm(self.read_alarm())

    def require_sqlite(self, api: str) -> None:
        if not self.sqlite_backed:
            raise SqlError(f"{api} is only available to SQLite-backed Durable Objects. {SQL_NOT_ENABLED}")

    def check_key(self, key: Any, call: str) -> int:
        """The key's size in bytes; TypeError for a non-str, StorageRangeError over the limit."""
        if not isinstance(key, str):
            raise TypeError(f"{call}(): keys are str, got {type(key).__name__} {key!r}")
        try:
            size = len(key.encode())
        except UnicodeEncodeError:
            raise TypeError(f"{call}(): key {_short(key)} is not valid Unicode (it holds a lone surrogate)") from None
        if size > self.limits.max_key_bytes:
            raise StorageRangeError(f"Keys cannot be larger than {self.limits.max_key_bytes} bytes; "
                                    f"key {_short(key)} is {size} bytes.")
        return size

    def key_list(self, keys: Any, call: str) -> list[str]:
        if not isinstance(keys, list):
            raise TypeError(f"{call}() takes a key (str) or a list of keys, got {type(keys).__name__}")
        self._check_batch(len(keys), call)
        for key in keys:
            self.check_key(key, call)
        return keys

    def entry(self, key: Any, value: Any, call: str) -> tuple[str, bytes]:
        """A key and its stored value, checked against the limits."""
        key_bytes = self.check_key(key, call)
        blob = encode_value(value, f"the value for key {_short(key)}")
        value_bytes = stored_bytes(blob)
        if value_bytes > self.limits.max_value_bytes:
            raise StorageRangeError(f"Values cannot be larger than {self.limits.max_value_bytes} bytes; "
                                    f"the value for key {_short(key)} is {value_bytes} bytes.")
        if key_bytes + value_bytes > self.limits.max_entry_bytes:
            raise StorageRangeError(f"A key and its value together cannot be larger than "
                                    f"{self.limits.max_entry_bytes} bytes; key {_short(key)} and its value "
                                    f"are {key_bytes + value_bytes} bytes.")
        return key, blob

    def entries(self, mapping: Mapping[str, Any]) -> list[tuple[str, bytes]]:
        self._check_batch(len(mapping), "put")
        return [self.entry(key, value, "put") for key, value in mapping.items()]

    def read(self, keys: str | list[str]) -> Any:
        if isinstance(keys, str):
            self.check_key(keys, "get")
            blob = self._blob(keys)
            return None if blob is None else decode_value(blob)
        found = {key: blob for key in sorted(set(self.key_list(keys, "get"))) if (blob := self._blob(key)) is not None}
        return {key: decode_value(blob) for key, blob in found.items()}

    def write(self, entries: list[tuple[str, bytes]]) -> None:
        with self.writing():
            for key, blob in entries:
                self._database.internal("INSERT OR REPLACE INTO _cf_KV (key, value) VALUES (?, ?)", (key, blob))

    def remove(self, keys: list[str]) -> int:
        with self.writing():
            return sum(self._database.internal("DELETE FROM _cf_KV WHERE key = ?", (key,)).rowcount for key in keys)

    def scan(self, bounds: Mapping[str, Any], call: str) -> Iterator[tuple[str, Any]]:
        """(key, value) pairs within the list options' bounds, in key order."""
        clauses, parameters = [], []
        for option, operator in (("start", ">="), ("startAfter", ">"), ("prefix", ">="), ("end", "<")):
            bound = bounds.get(option)
            if bound is not None:
                if not isinstance(bound, str):
                    raise TypeError(f"{call}(): {option} must be a str, got {type(bound).__name__}")
                clauses.append(f"key {operator} ?")
                parameters.append(bound)
        if bounds.get("start") is not None and bounds.get("startAfter") is not None:
            raise TypeError(f"{call}() cannot be called with both start and startAfter values.")
        if bounds.get("prefix") and (upper := prefix_end(bounds["prefix"])) is not None:
            clauses.append("key < ?")
            parameters.append(upper)
        sql = "SELECT key, value FROM _cf_KV" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        sql += " ORDER BY key DESC" if bounds.get("reverse") else " ORDER BY key"
        limit = bounds.get("limit")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                raise TypeError(f"List limit must be positive (got {limit!r}).")
            sql += " LIMIT ?"
            parameters.append(limit)
        rows = self._database.internal(sql, tuple(parameters)).fetchall()
        return ((key, decode_value(blob)) for key, blob in rows)

    def read_alarm(self) -> int | None:
        row = self._database.internal("SELECT value FROM _cf_METADATA WHERE key = ?", (ALARM_ROW,)).fetchone()
        return None if row is None else int(row[0])

    def write_alarm(self, milliseconds: int | None) -> None:
        with self.writing():
            if milliseconds is None:
                self._database.internal("DELETE FROM _cf_METADATA WHERE key = ?", (ALARM_ROW,))
            else:
                self._database.internal("INSERT OR REPLACE INTO _cf_METADATA (key, value) VALUES (?, ?)",
                                        (ALARM_ROW, milliseconds))
            self._alarm_written = True

    def delete_everything(self) -> None:
        with self.writing():
            self._database.internal("PRAGMA defer_foreign_keys = ON")  # tables may reference each other
            for kind in ("view", "table"):
                while name := self._user_object(kind):
                    self._database.internal(f'DROP {kind.upper()} "{name.replace(chr(34), chr(34) * 2)}"')
            self._database.internal("DELETE FROM _cf_KV")
            self.write_alarm(None)
        if self._database.depth == 0:
            self._database.internal("VACUUM")  # give the space back, as deleteAll deallocates storage

    def _user_object(self, kind: str) -> str | None:
        """A table or view of the user's (virtual tables first, as dropping one drops its shadow tables)."""
        row = self._database.internal(
            "SELECT name FROM sqlite_master WHERE type = ? AND substr(name, 1, 7) != 'sqlite_' "
            "AND lower(substr(name, 1, 4)) != '_cf_' ORDER BY sql LIKE 'CREATE VIRTUAL%' DESC LIMIT 1",
            (kind,)).fetchone()
        return None if row is None else row[0]

    def _blob(self, key: str) -> bytes | None:
        row = self._database.internal("SELECT value FROM _cf_KV WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _check_batch(self, count: int, call: str) -> None:
        if count > self.limits.max_batch_keys:
            raise StorageRangeError(f"{call}() takes at most {self.limits.max_batch_keys} keys at a time; "
                                    f"{count} were given.")

    def _announce_alarm(self, milliseconds: int | None) -> None:
        if milliseconds == self._alarm_ms:
            return
        self._alarm_ms = milliseconds
        if self._on_alarm_change is not None:
            self._on_alarm_change(self.alarm_at())


class SyncKv:
    """``ctx.storage.kv``: the same data as the async KV API, read and written synchronously."""

    def __init__(self, core: DurableObjectStorage) -> None:
        self._core = core

    def get(self, key: str) -> Any:
        """The value, or None when the key is missing."""
        self._core.require_sqlite("storage.kv")
        self._core.check_key(key, "kv.get")
        return self._core.read(key)

    def put(self, key: str, value: Any) -> None:
        self._core.require_sqlite("storage.kv")
        self._core.write([self._core.entry(key, value, "kv.put")])

    def delete(self, key: str) -> bool:
        self._core.require_sqlite("storage.kv")
        self._core.check_key(key, "kv.delete")
        return self._core.remove([key]) == 1

    def list(self, options: Any = None, /, **keywords: Any) -> list[list[Any]]:
        """``[key, value]`` pairs in key order (JavaScript's iterable of entries): ``for key, value in kv.list()``."""
        self._core.require_sqlite("storage.kv")
        bounds = _check_options("kv.list", options, keywords, LIST_OPTIONS)
        return [[key, value] for key, value in self._core.scan(bounds, "kv.list")]
