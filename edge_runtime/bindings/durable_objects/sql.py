"""One Durable Object's SQLite file: its limits, how values are stored, nested atomic scopes, and
``ctx.storage.sql``.

The storage's own tables (KV data, the alarm) live in the same file under reserved ``_cf_`` names,
as Cloudflare keeps them (``_cf_KV``). User SQL runs under an authorizer that refuses those names,
transactions (``storage.transaction()`` is the way) and ATTACH; the storage's statements run trusted.
No statement cache: a statement prepared trusted must never be reused for user SQL of the same text.
Values are stored as tagged JSON (top-level ``bytes`` raw) so they come back exactly as put.
"""

from __future__ import annotations

import base64
import datetime
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgewise_sdk.workers import JsDict

from ..d1 import split_statements

KIB, MIB = 1024, 1024 * 1024
RESERVED_PREFIX = "_cf_"
ROW_OVERHEAD_BYTES = 64  # SQLite's record header: a KV row of a full 2 MB key and value must still fit
BUSY_TIMEOUT_S = 5.0  # another process (a CLI reading the state) may hold the write lock briefly
_RAW_BYTES = b"\x00"  # first byte of a stored top-level bytes value; any other value is UTF-8 JSON
TRANSACTION_REFUSED = ("To execute a transaction, please use the state.storage.transaction() or "
                       "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT "
                       "statements. The JavaScript API is safer because it will automatically roll back on "
                       "exceptions, and because it interacts correctly with Durable Objects' automatic atomic "
                       "write coalescing.")
SQL_NOT_ENABLED = ("SQL is not enabled for this Durable Object class. To enable it, change `new_classes` to "
                   "`new_sqlite_classes` within the 'migrations' field in your wrangler.jsonc or wrangler.toml file.")
# Read-only or per-connection pragmas user SQL may run; the rest (journal_mode, writable_schema ...) stay ours.
ALLOWED_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "foreign_key_check", "foreign_keys", "defer_foreign_keys", "case_sensitive_like", "legacy_alter_table",
    "recursive_triggers", "reverse_unordered_selects", "ignore_check_constraints", "quick_check",
    "integrity_check", "optimize", "data_version", "page_count", "page_size", "freelist_count",
})


@dataclass(frozen=True)
class StorageLimits:
    """Cloudflare's limits on one object's storage, from
    https://developers.cloudflare.com/durable-objects/platform/limits/ . The defaults are SQLite-backed
    objects' (``new_sqlite_classes``): a key and its value together at most 2 MB, rows 2 MB, SQL
    statements 100 KB, 100 bound parameters, 100 columns, 32 function arguments, LIKE patterns 50 bytes.
    ``key_value_backed()`` gives the legacy backend's (``new_classes``): keys 2 KiB, values 128 KiB.
    Sizes are bytes of UTF-8 keys and of values as stored."""

    max_key_bytes: int = 2 * MIB
    max_value_bytes: int = 2 * MIB
    max_entry_bytes: int = 2 * MIB  # a key and its value together
    max_batch_keys: int = 128  # keys per get/put/delete call
    max_sql_row_bytes: int = 2 * MIB
    max_sql_statement_bytes: int = 100 * KIB
    max_sql_bindings: int = 100
    max_sql_columns: int = 100
    max_sql_function_args: int = 32
    max_like_pattern_bytes: int = 50

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"StorageLimits.{field.name} must be a positive int, got {value!r}")

    @classmethod
    def key_value_backed(cls) -> StorageLimits:
        return cls(max_key_bytes=2 * KIB, max_value_bytes=128 * KIB, max_entry_bytes=130 * KIB)


class StorageRangeError(ValueError):
    """A key, value or batch over Cloudflare's limits (workerd raises a RangeError); nothing was written."""


class SqlError(Exception):
    """A statement SQLite refused; worded as workerd words it (``no such table: t: SQLITE_ERROR``)."""


# --- stored values -------------------------------------------------------------------------------------

def encode_value(value: Any, where: str = "the value") -> bytes:
    """The stored form of a value; TypeError naming what cannot be stored (and where)."""
    if isinstance(value, (bytes, memoryview)):
        return _RAW_BYTES + bytes(value)
    try:
        text = json.dumps(_tagged(value, where), ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise TypeError(f"{where} is nested too deeply (or contains itself) to be stored") from None
    return text.encode("utf-8", "surrogatepass")  # JS strings may hold lone surrogates; keep them


def decode_value(blob: bytes) -> Any:
    if blob[:1] == _RAW_BYTES:
        return bytes(blob[1:])
    return json.loads(blob.decode("utf-8", "surrogatepass"), object_hook=_untagged)


def _tagged(value: Any, where: Any) -> Any:
    """JSON for ``value``; bytes, datetimes and dicts holding a ``"$"`` key become ``{"$": tag, "v": ...}``.
    ``where`` is the value's place, ``(parent, key)`` pairs below the top, spelled out only for an error."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, memoryview)):
        return {"$": "b", "v": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime.datetime):
        return {"$": "d", "v": value.isoformat()}
    if isinstance(value, list):
        return [_tagged(item, (where, index)) for index, item in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"{_place(where)}: dict keys must be str to be stored, got {type(key).__name__} "
                                f"{key!r}")
        items = {key: _tagged(item, (where, key)) for key, item in value.items()}
        return {"$": "o", "v": [[key, item] for key, item in items.items()]} if "$" in items else items
    if isinstance(value, (tuple, bytearray)):
        raise TypeError(f"{type(value).__name__} cannot be stored ({_place(where)}); use a list or bytes instead.")
    raise TypeError(f"{type(value).__name__} cannot be stored ({_place(where)}): store None, bool, numbers, str, "
                    "bytes, datetime, lists and dicts with str keys.")


def _place(where: Any) -> str:
    keys = []
    while isinstance(where, tuple):
        where, key = where
        keys.append(f"[{key!r}]")
    return where + "".join(reversed(keys))


def _untagged(obj: dict[str, Any]) -> Any:
    tag = obj.get("$")
    if tag is None:
        return JsDict(obj)
    payload = obj["v"]
    if tag == "b":
        return base64.b64decode(payload)
    if tag == "d":
        return datetime.datetime.fromisoformat(payload)
    return JsDict(payload)  # "o": a dict with a "$" key, kept as pairs


def stored_bytes(blob: bytes) -> int:
    return len(blob) - 1 if blob[:1] == _RAW_BYTES else len(blob)


# --- the database --------------------------------------------------------------------------------------

class ObjectDatabase:
    """The object's SQLite file (created if missing), in WAL mode, with Cloudflare's SQL limits set."""

    def __init__(self, path: Path, limits: StorageLimits) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                          cached_statements=0, check_same_thread=False)
        self.depth = 0  # open atomic scopes
        self._trusted = False
        self._closed = False
        self._denial: str | None = None
        # WAL with synchronous=NORMAL: a committed write survives a crash of the process (not a power cut).
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.execute("PRAGMA foreign_keys=ON")  # enforced, as in Cloudflare's SQLite (D1 too)
        for limit, value in ((sqlite3.SQLITE_LIMIT_LENGTH, limits.max_sql_row_bytes + ROW_OVERHEAD_BYTES),
                             (sqlite3.SQLITE_LIMIT_SQL_LENGTH, limits.max_sql_statement_bytes),
                             (sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limits.max_sql_bindings),
                             (sqlite3.SQLITE_LIMIT_COLUMN, limits.max_sql_columns),
                             (sqlite3.SQLITE_LIMIT_FUNCTION_ARG, limits.max_sql_function_args),
                             (sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, limits.max_like_pattern_bytes)):
            self.connection.setlimit(limit, value)
        self.connection.set_authorizer(self._authorize)

    def internal(self, sql: str, parameters: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Runs one of the storage's own statements, which may touch the reserved tables."""
        self._check_open()
        self._trusted = True
        try:
            return self.connection.execute(sql, parameters)
        finally:
            self._trusted = False

    def user(self, sql: str, parameters: tuple[Any, ...] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Runs one statement of user SQL under the authorizer: its column names and rows.
        SqlError worded like workerd's."""
        self._check_open()
        self._denial = None
        try:
            cursor = self.connection.execute(sql, parameters)
            return [column[0] for column in cursor.description or ()], cursor.fetchall()
        except sqlite3.Error as error:
            code = getattr(error, "sqlite_errorname", None) or "SQLITE_ERROR"
            raise SqlError(f"{self._denial or error}: {code}") from None
        except (sqlite3.Warning, OverflowError) as error:  # more than one statement, a too-big integer
            raise SqlError(f"{error}: SQLITE_ERROR") from None

    @contextmanager
    def atomic(self) -> Iterator[Savepoint]:
        """A savepoint: everything inside commits together, or is rolled back if the block raises.
        Scopes nest; the outermost one is the transaction."""
        savepoint = Savepoint(self, f"_cf_savepoint_{self.depth}")
        self.internal(f"SAVEPOINT {savepoint.name}")
        self.depth += 1
        try:
            yield savepoint
        except BaseException:
            self.internal(f"ROLLBACK TO {savepoint.name}")
            raise
        finally:
            self.depth -= 1
            self.internal(f"RELEASE {savepoint.name}")

    def size_bytes(self) -> int:
        pages = self.internal("PRAGMA page_count").fetchone()[0]
        return pages * self.internal("PRAGMA page_size").fetchone()[0]

    def close(self) -> None:
        self._closed = True
        self.connection.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Durable Object's storage is closed (the object was shut down)")

    def _authorize(self, action: int, first: str | None, second: str | None, database: str | None,
                   source: str | None) -> int:
        if self._trusted:
            return sqlite3.SQLITE_OK
        if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
            self._denial = TRANSACTION_REFUSED
        elif action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            self._denial = "ATTACH and DETACH are not allowed: a Durable Object has one database"
        elif action == sqlite3.SQLITE_PRAGMA and (first or "").lower() not in ALLOWED_PRAGMAS:
            self._denial = f"PRAGMA {first} is not allowed in a Durable Object's SQL"
        elif not any(name and name.lower().startswith(RESERVED_PREFIX) for name in (first, second)):
            return sqlite3.SQLITE_OK
        # a reserved name: SQLite words it ("access to _cf_KV.key is prohibited", "not authorized")
        return sqlite3.SQLITE_DENY


class Savepoint:
    """An open atomic scope; ``rollback()`` undoes what it did so far (``txn.rollback()``)."""

    def __init__(self, database: ObjectDatabase, name: str) -> None:
        self.database, self.name = database, name

    def rollback(self) -> None:
        self.database.internal(f"ROLLBACK TO {self.name}")


class SqlStorage:
    """``ctx.storage.sql``: ``exec(query, *bindings)`` and ``databaseSize``; ``enabled`` is False for a
    class declared in ``new_classes`` (key-value backed), whose SQL calls fail as in ``wrangler dev``."""

    def __init__(self, database: ObjectDatabase, enabled: bool = True) -> None:
        self._database, self._enabled = database, enabled

    def exec(self, query: str, *bindings: Any) -> SqlCursor:
        """Runs every statement of ``query`` (separated by ``;``) atomically; ``bindings`` fill the
        last one's ``?``s; the cursor holds the last statement's rows."""
        self._check_enabled()
        if not isinstance(query, str):
            raise TypeError(f"sql.exec() takes the query as a str, got {type(query).__name__}")
        parameters = tuple(_binding(value, index) for index, value in enumerate(bindings, 1))
        statements = [text for _, text in split_statements(query)] or [query]
        rows_read = 0
        with self._database.atomic():
            changes_before = self._database.connection.total_changes
            for index, statement in enumerate(statements):
                last = index == len(statements) - 1
                columns, rows = self._database.user(statement, parameters if last else ())
                rows_read += len(rows)
        return SqlCursor(columns, rows, rows_read, self._database.connection.total_changes - changes_before)

    @property
    def databaseSize(self) -> int:  # noqa: N802 - Cloudflare's name
        """Bytes the database file takes (pages times page size)."""
        self._check_enabled()
        return self._database.size_bytes()

    def _check_enabled(self) -> None:
        if not self._enabled:
            raise SqlError(SQL_NOT_ENABLED)


class SqlCursor:
    """The rows of an ``exec``, read once: iterate (dicts), ``toArray()``, ``one()``, ``raw()`` (lists), ``next()``.

    ``rowsRead`` counts the rows the statements returned (SQLite does not report rows scanned);
    ``rowsWritten`` the rows inserted, updated or deleted, triggers included.
    """

    def __init__(self, columns: list[str], rows: list[tuple[Any, ...]], rows_read: int, rows_written: int) -> None:
        self.columnNames = columns  # noqa: N815 - Cloudflare's names
        self.rowsRead = rows_read  # noqa: N815
        self.rowsWritten = rows_written  # noqa: N815
        self._rows = iter(rows)

    def __iter__(self) -> Iterator[JsDict]:
        return self

    def __next__(self) -> JsDict:
        return JsDict(zip(self.columnNames, next(self._rows)))

    def next(self) -> JsDict:
        """The JavaScript iterator step: ``{done, value}``."""
        row = next(self, None)
        return JsDict(done=row is None, value=row)

    def toArray(self) -> list[JsDict]:  # noqa: N802
        return list(self)

    def one(self) -> JsDict:
        """The only row; an error when the query gave none or several."""
        rows = self.toArray()
        if len(rows) != 1:
            amount = "no results" if not rows else "multiple results"
            raise SqlError(f"Expected exactly one result from SQL query, but got {amount}.")
        return rows[0]

    def raw(self) -> Iterator[list[Any]]:
        """The remaining rows as lists of values, in ``columnNames`` order."""
        return (list(row) for row in self._rows)


def _binding(value: Any, position: int) -> Any:
    if value is None or isinstance(value, (int, float, str, bytes)):
        return value
    if isinstance(value, memoryview):
        return value.tobytes()
    raise TypeError(f"sql.exec() binding {position} is a {type(value).__name__}, which SQLite cannot store: "
                    "pass None, a bool, an int, a float, a str or bytes")
