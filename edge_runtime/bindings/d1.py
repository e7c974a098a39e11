"""The D1 binding (``d1_databases``): a SQL database on SQLite, the engine D1 itself runs.

Each binding is one SQLite file under ``<state>/d1/``, named by its ``database_id``. The file has one
connection and one worker thread: every query of every PoP runs there in turn, off the event loop,
as D1 runs one database's queries one at a time. WAL and a busy timeout let another process (the
CLI) use the same file meanwhile.

Calls and results follow workerd's ``d1-api.ts`` as Python Workers see them: results and rows are
JsDicts, BLOBs come back as lists of byte values, and failures raise ``D1Error`` whose message
starts with D1's prefix (``D1_ERROR: no such table: notes: SQLITE_ERROR``).
``list_migrations``/``apply_migrations`` apply a migrations folder as ``wrangler d1 migrations`` does.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edgewise_sdk.workers import JsDict, to_jsdict

from ..config import BindingSpec
from ..config_error import ConfigError
from . import StateDir

SERVED_BY = "edgewise-d1"
BUSY_TIMEOUT_S = 5.0  # how long a write waits for another process's lock on the file
SESSION_CONSTRAINTS = ("first-unconstrained", "first-primary")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RAW_OPTIONS = ("columnNames",)
# A BEGIN would leave the connection every PoP shares inside one caller's transaction; ATTACH reaches
# other files. D1 refuses both; batch() is its transaction.
_DENIED_ACTIONS = {
    sqlite3.SQLITE_TRANSACTION: "SQL transactions (BEGIN, COMMIT, ROLLBACK) are not allowed in D1: "
                                "use env.DB.batch([...]) to run statements in one transaction",
    sqlite3.SQLITE_SAVEPOINT: "SAVEPOINT is not allowed in D1: use env.DB.batch([...]) to run statements "
                              "in one transaction",
    sqlite3.SQLITE_ATTACH: "ATTACH is not allowed in D1: a D1 database is one file",
    sqlite3.SQLITE_DETACH: "DETACH is not allowed in D1: a D1 database is one file",
}

T = TypeVar("T")


class D1Error(Exception):
    """A failed D1 call; the message starts with D1's own prefix (``D1_ERROR: ``, ``D1_EXEC_ERROR: ``...)."""


class D1TypeError(D1Error, TypeError):
    """A value ``bind()`` cannot pass to SQLite (``D1_TYPE_ERROR: ``)."""


@dataclass
class _Outcome:
    """What one statement gave: column names, rows as SQLite returned them, D1's meta, the bookmark after it."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    meta: dict[str, Any]
    bookmark: str


# --- the database: one file, one connection, one thread --------------------------------------------

def open_connection(file: Path, cached_statements: int = 128) -> sqlite3.Connection:
    # isolation_level=None: each statement commits on its own, as on D1; batch() opens its own transaction
    connection = sqlite3.connect(file, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False,
                                 cached_statements=cached_statements)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA foreign_keys = ON")  # D1 enforces foreign keys
    return connection


class _Database:
    """One SQLite file and the one thread that runs every statement on it, in turn.

    The sync methods run on that thread only; ``call`` hands one to it from the event loop.
    """

    def __init__(self, file: Path, binding: str) -> None:
        self.file, self.binding = file, binding
        # a cached statement would skip the authorizer: every one is prepared anew
        self.connection = open_connection(file, cached_statements=0)
        self.connection.set_authorizer(self._authorize)
        self.page_size: int = self.connection.execute("PRAGMA page_size").fetchone()[0]
        self._in_control, self._denied = False, ""
        self._opened_ms, self._num_writes = time.time_ns() // 1_000_000, 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"d1-{binding}")
        self.is_closed = False

    async def call(self, work: Callable[..., T], *args: Any) -> T:
        try:
            future = self._thread.submit(work, *args)
        except RuntimeError:
            raise D1Error(f"D1_ERROR: env.{self.binding} is closed (the dev run that opened it has ended or "
                          f"reloaded its bindings)") from None
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        if not self.is_closed:
            self.is_closed = True
            self._thread.submit(self.connection.close)
            self._thread.shutdown(wait=True)

    def _authorize(self, action: int, *_: Any) -> int:
        if action in _DENIED_ACTIONS and not self._in_control:
            self._denied = _DENIED_ACTIONS[action]
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def bookmark(self) -> str:
        """Opaque, and larger after every write (and after a restart): fixed-width hex compares as text."""
        return f"{self._opened_ms:012x}-{self._num_writes:012x}"

    def query(self, sql: str, params: tuple[Any, ...]) -> _Outcome:
        """Run one statement on its own (SQLite makes it atomic: a failing one changes nothing)."""
        connection = self.connection
        changes_before, schema_before = connection.total_changes, self._schema_version()
        started = time.perf_counter()
        self._denied = ""
        try:
            cursor = connection.execute(sql, params)
            rows = cursor.fetchall()
        except sqlite3.Error as error:
            raise D1Error(_error_message(error, self._denied)) from error
        duration_ms = (time.perf_counter() - started) * 1000
        changes = connection.total_changes - changes_before
        changed_db = changes > 0 or self._schema_version() != schema_before
        self._num_writes += changed_db
        size_after = connection.execute("PRAGMA page_count").fetchone()[0] * self.page_size
        meta = {"served_by": SERVED_BY, "served_by_primary": True, "duration": duration_ms,
                "timings": {"sql_duration_ms": duration_ms}, "changes": changes,
                "last_row_id": cursor.lastrowid or 0, "changed_db": changed_db, "size_after": size_after,
                "rows_read": len(rows), "rows_written": changes}
        columns = [column[0] for column in cursor.description or ()]
        return _Outcome(columns, rows, meta, self.bookmark())

    def batch(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[_Outcome]:
        """All statements in one transaction: the first to fail rolls back those before it."""
        self._control("BEGIN IMMEDIATE")
        try:
            outcomes = [self.query(sql, params) for sql, params in statements]
            self._control("COMMIT")
        except BaseException:
            if self.connection.in_transaction:
                self._control("ROLLBACK")
            raise
        return outcomes

    def exec(self, script: str) -> tuple[int, float]:
        """Each statement of the script on its own, unbound; stops at the first that fails (as D1)."""
        count, duration_ms = 0, 0.0
        for line, sql in split_statements(script):
            try:
                outcome = self.query(sql, ())
            except D1Error as error:
                detail = str(error).removeprefix("D1_ERROR: ")
                raise D1Error(f"D1_EXEC_ERROR: Error in line {line}: {sql}: {detail}") from error
            count, duration_ms = count + 1, duration_ms + outcome.meta["duration"]
        return count, duration_ms

    def dump(self) -> bytes:
        # serialize() copies every page inside one read transaction: a consistent snapshot
        return self.connection.serialize()

    def _control(self, sql: str) -> None:
        self._in_control = True
        try:
            self.connection.execute(sql)
        finally:
            self._in_control = False

    def _schema_version(self) -> int:
        return self.connection.execute("PRAGMA schema_version").fetchone()[0]


def _error_message(error: sqlite3.Error, denied: str) -> str:
    """D1's shape: ``D1_ERROR: <SQLite's message>: <SQLite's primary result code>``."""
    if denied:
        return f"D1_ERROR: {denied}: SQLITE_AUTH"
    message = str(error)
    if message.startswith("Incorrect number of bindings"):
        return f"D1_ERROR: Wrong number of parameter bindings for SQL query. {message}"
    if message.startswith("You can only execute one statement at a time"):
        return f"D1_ERROR: {message} prepare() takes one statement: use batch() or exec() for several"
    name = getattr(error, "sqlite_errorname", None)
    return f"D1_ERROR: {message}: {'_'.join(name.split('_')[:2])}" if name else f"D1_ERROR: {message}"


def split_statements(script: str) -> Iterator[tuple[int, str]]:
    """The complete statements of a script, each with the line it starts on (1-based).

    SQLite decides where a statement ends, so a ``;`` inside a string, a comment or a trigger body
    does not split. Pieces holding only whitespace and ``--`` comments are skipped.
    """
    start, current = 0, ""
    pieces = script.split(";")
    for index, piece in enumerate(pieces):
        current += piece + (";" if index < len(pieces) - 1 else "")
        if index < len(pieces) - 1 and not sqlite3.complete_statement(current):
            continue
        if _has_sql(current):
            leading = len(current) - len(current.lstrip())
            yield script.count("\n", 0, start + leading) + 1, current.strip()
        start, current = start + len(current), ""


def _has_sql(text: str) -> bool:
    lines = (line.split("--", 1)[0] for line in text.splitlines())
    return any(line.strip(" \t;") for line in lines)


# --- what a Worker calls ---------------------------------------------------------------------------

def _bind_value(value: Any) -> Any:
    """A Python value as D1 binds it: bool -> 1/0, a list of byte values -> BLOB, as workerd does."""
    if value is None or isinstance(value, (str, float, bytes)):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise D1TypeError(f"D1_TYPE_ERROR: Type 'int' not supported for value '{value}': SQLite integers are "
                          f"64-bit; bind it as a str or float")
    if isinstance(value, list) and all(type(item) is int and 0 <= item < 256 for item in value):
        return bytes(value)
    raise D1TypeError(f"D1_TYPE_ERROR: Type '{type(value).__name__}' not supported for value {value!r}: "
                      f"bind None, bool, int, float, str or bytes")


def _cell(value: Any) -> Any:
    return list(value) if isinstance(value, bytes) else value  # a BLOB reaches Python as an array of bytes


def _rows(outcome: _Outcome) -> list[JsDict]:
    return [JsDict(zip(outcome.columns, map(_cell, row))) for row in outcome.rows]


def _result(outcome: _Outcome) -> JsDict:
    return JsDict(success=True, meta=to_jsdict(outcome.meta), results=_rows(outcome))


def _options(options: Mapping[str, Any] | None, keywords: dict[str, Any], known: tuple[str, ...],
             call: str) -> dict[str, Any]:
    """The JS options object: a dict in the options position and/or keyword arguments."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"{call}: options are a dict or keyword arguments, got {type(options).__name__}")
    merged = {**(options or {}), **keywords}
    for key in merged:
        if key not in known:
            raise TypeError(f"{call}: unknown option {key!r} (D1 knows {', '.join(known)})")
    return merged


class D1PreparedStatement:
    """``env.DB.prepare(sql)``: bind values with ``bind(...)`` (a new statement), then run it."""

    def __init__(self, database: _Database, sql: str, params: tuple[Any, ...] = (),
                 session: D1DatabaseSession | None = None) -> None:
        self._database, self._session = database, session
        self.statement, self.params = sql, params

    def bind(self, *values: Any) -> D1PreparedStatement:
        params = tuple(_bind_value(value) for value in values)
        return D1PreparedStatement(self._database, self.statement, params, self._session)

    async def first(self, column: str | None = None) -> Any:
        """The first row, or its ``column``; None without rows."""
        rows = _rows(await self._outcome())
        if not rows:
            return None
        if column is None:
            return rows[0]
        if column not in rows[0]:
            raise D1Error(f"D1_COLUMN_NOTFOUND: Column not found ({column})")
        return rows[0][column]

    async def all(self) -> JsDict:
        return _result(await self._outcome())

    async def run(self) -> JsDict:
        return _result(await self._outcome())

    async def raw(self, options: Mapping[str, Any] | None = None, /, **keywords: Any) -> list[list[Any]]:
        """Rows as lists; ``columnNames=True`` puts the column names first."""
        outcome = await self._outcome()
        rows = [[_cell(value) for value in row] for row in outcome.rows]
        if _options(options, keywords, RAW_OPTIONS, "raw()").get("columnNames"):
            return [list(outcome.columns), *rows]
        return rows

    async def _outcome(self) -> _Outcome:
        outcome = await self._database.call(self._database.query, self.statement, self.params)
        if self._session is not None:
            self._session._saw(outcome.bookmark)
        return outcome

    def __repr__(self) -> str:
        return f"<D1PreparedStatement {self.statement!r} params={list(self.params)!r}>"


async def _batch(database: _Database, statements: Any) -> list[_Outcome]:
    if not isinstance(statements, list):
        raise TypeError(f"batch() takes a list of prepared statements, got {type(statements).__name__}")
    for index, statement in enumerate(statements):
        if not isinstance(statement, D1PreparedStatement):
            raise TypeError(f"batch(): item {index} is a {type(statement).__name__}, not a statement from "
                            f"prepare()")
        if statement._database is not database:
            raise TypeError(f"batch(): item {index} was prepared on another D1 database")
    work = [(statement.statement, statement.params) for statement in statements]
    return await database.call(database.batch, work) if work else []


class D1DatabaseSession:
    """``env.DB.withSession(...)``: queries that see at least what the session has seen (here: always
    the one primary), and ``getBookmark()``, the latest bookmark the session saw."""

    def __init__(self, database: _Database, bookmark: str | None) -> None:
        self._database, self._bookmark = database, bookmark

    def prepare(self, sql: str) -> D1PreparedStatement:
        return D1PreparedStatement(self._database, _check_sql(sql), (), self)

    async def batch(self, statements: list[D1PreparedStatement]) -> list[JsDict]:
        outcomes = await _batch(self._database, statements)
        for outcome in outcomes:
            self._saw(outcome.bookmark)
        return [_result(outcome) for outcome in outcomes]

    def getBookmark(self) -> str | None:
        return self._bookmark

    def _saw(self, bookmark: str) -> None:
        if self._bookmark is None or bookmark > self._bookmark:
            self._bookmark = bookmark


def _check_sql(sql: Any) -> str:
    if not isinstance(sql, str):
        raise TypeError(f"D1 takes SQL as a str, got {type(sql).__name__}")
    return sql


class D1Database:
    """``env.DB``: the calls of Cloudflare's D1Database."""

    def __init__(self, database: _Database) -> None:
        self._database = database

    def prepare(self, sql: str) -> D1PreparedStatement:
        return D1PreparedStatement(self._database, _check_sql(sql))

    async def batch(self, statements: list[D1PreparedStatement]) -> list[JsDict]:
        """Every statement in one transaction (all or nothing), one result each."""
        return [_result(outcome) for outcome in await _batch(self._database, statements)]

    async def exec(self, sql: str) -> JsDict:
        """Run a script of ``;``-separated statements without bindings: ``{count, duration}``."""
        count, duration_ms = await self._database.call(self._database.exec, _check_sql(sql))
        return JsDict(count=count, duration=duration_ms)

    async def dump(self) -> bytes:
        """The database file's bytes, as of one moment."""
        return await self._database.call(self._database.dump)

    def withSession(self, constraint_or_bookmark: str | None = None) -> D1DatabaseSession:
        if constraint_or_bookmark is not None and not isinstance(constraint_or_bookmark, str):
            raise TypeError(f"withSession() takes a bookmark or one of {', '.join(SESSION_CONSTRAINTS)}, "
                            f"got {type(constraint_or_bookmark).__name__}")
        is_bookmark = constraint_or_bookmark not in (None, *SESSION_CONSTRAINTS)
        return D1DatabaseSession(self._database, constraint_or_bookmark if is_bookmark else None)

    def close(self) -> None:
        self._database.close()

    def __repr__(self) -> str:
        return f"<D1Database {self._database.binding} at {self._database.file}>"


def database_file(spec: BindingSpec, state: StateDir) -> Path:
    """The binding's SQLite file: ``<state>/d1/<database_id>.sqlite`` (else database_name, else the binding)."""
    settings = spec.settings
    stem = settings.get("database_id") or settings.get("database_name") or spec.name
    if not isinstance(stem, str) or not stem.replace("-", "").replace("_", "").replace(".", "").isalnum() \
            or stem.startswith("."):
        raise ConfigError(None, "d1_databases", f"binding {spec.name!r}: database_id must be a string of "
                          f"letters, digits, '-', '_' or '.' (it names the database's file), got {stem!r}")
    return state.folder("d1") / f"{stem}.sqlite"


def open_binding(spec: BindingSpec, state: StateDir) -> D1Database:
    return D1Database(_Database(database_file(spec, state), spec.name or "DB"))
