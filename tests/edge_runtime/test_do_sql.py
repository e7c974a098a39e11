"""ctx.storage.sql of one Durable Object (edge_runtime/bindings/do_sql.py): exec and cursors with the call
shapes of workers-py's worker_durable_object.py, errors worded like workerd's, the reserved _cf_ tables,
and Cloudflare's SQL limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.bindings.durable_objects.sql import TRANSACTION_REFUSED, SqlError
from edge_runtime.bindings.durable_objects.storage import DurableObjectStorage

MIB = 1024 * 1024


@pytest.fixture
def storage(tmp_path: Path):
    opened = DurableObjectStorage(tmp_path / "room.sqlite")
    yield opened
    opened.close()


@pytest.fixture
def sql(storage):
    return storage.sql


@pytest.fixture
def notes(sql):
    sql.exec("CREATE TABLE test_iter (id INTEGER PRIMARY KEY, val TEXT)")
    for row_id, val in ((1, "alpha"), (2, "beta"), (3, "gamma")):
        sql.exec("INSERT INTO test_iter (id, val) VALUES (?, ?)", row_id, val)
    return sql


# --- the call shapes of workers-py's own Durable Object tests ------------------------------------------

def test_exec_and_query(sql):
    sql.exec("DROP TABLE IF EXISTS test_sql")
    sql.exec("CREATE TABLE test_sql (id INTEGER PRIMARY KEY, val TEXT)")
    sql.exec("INSERT INTO test_sql (id, val) VALUES (?, ?)", 1, "hello")
    sql.exec("INSERT INTO test_sql (id, val) VALUES (?, ?)", 2, "world")
    rows = sql.exec("SELECT id, val FROM test_sql ORDER BY id").toArray()
    assert rows == [{"id": 1, "val": "hello"}, {"id": 2, "val": "world"}]
    assert rows[1].val == "world"  # rows are JsDicts, with attribute access
    sql.exec("DROP TABLE test_sql")


def test_cursor_one_and_column_names(notes):
    assert notes.exec("SELECT val FROM test_iter WHERE id = 2").one()["val"] == "beta"
    cursor = notes.exec("SELECT id AS foo, val AS bar FROM test_iter WHERE id > 5")
    assert list(cursor.columnNames) == ["foo", "bar"] and cursor.toArray() == []
    with pytest.raises(SqlError, match="Expected exactly one result from SQL query, but got no results."):
        notes.exec("SELECT * FROM test_iter WHERE id > 5").one()
    with pytest.raises(SqlError, match="but got multiple results."):
        notes.exec("SELECT * FROM test_iter").one()


def test_rows_read_and_written(notes):
    write_cursor = notes.exec("INSERT INTO test_iter VALUES (4, 'delta')")
    assert write_cursor.toArray() == [] and write_cursor.rowsWritten == 1
    assert notes.exec("UPDATE test_iter SET val = upper(val) WHERE id <= 3").rowsWritten == 3
    read_cursor = notes.exec("SELECT * FROM test_iter")
    assert read_cursor.rowsRead == 4 and read_cursor.rowsWritten == 0


def test_database_size(sql):
    size = sql.databaseSize
    assert isinstance(size, int) and size > 0
    sql.exec("CREATE TABLE blobs (b BLOB)")
    sql.exec("INSERT INTO blobs VALUES (zeroblob(1000000))")
    assert sql.databaseSize >= size + 1_000_000


def test_iteration_raw_and_next(notes):
    rows = [{"id": row["id"], "val": row["val"]} for row in notes.exec("SELECT id, val FROM test_iter ORDER BY id")]
    assert [row["val"] for row in rows] == ["alpha", "beta", "gamma"]
    assert list(notes.exec("SELECT id, val FROM test_iter ORDER BY id DESC").raw()) == [
        [3, "gamma"], [2, "beta"], [1, "alpha"]]
    cursor = notes.exec("SELECT id FROM test_iter ORDER BY id")
    assert cursor.next() == {"done": False, "value": {"id": 1}}
    assert cursor.toArray() == [{"id": 2}, {"id": 3}]  # a cursor is read once
    assert cursor.next().done is True


# --- statements and values -----------------------------------------------------------------------------

def test_several_statements_bindings_fill_the_last(sql):
    cursor = sql.exec("CREATE TABLE t (a INTEGER, b TEXT); INSERT INTO t VALUES (1, 'x;y');"
                      "INSERT INTO t VALUES (?, ?) RETURNING a, b", 2, "z")
    assert cursor.toArray() == [{"a": 2, "b": "z"}] and cursor.rowsWritten == 2
    sql.exec("CREATE TABLE log (n); CREATE TRIGGER logged AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.a); END;")
    sql.exec("INSERT INTO t VALUES (3, 'w')")
    assert sql.exec("SELECT n FROM log").one() == {"n": 3}
    assert [row["b"] for row in sql.exec("SELECT b FROM t ORDER BY a")] == ["x;y", "z", "w"]


def test_a_failing_statement_undoes_the_whole_exec(sql):
    sql.exec("CREATE TABLE t (a UNIQUE)")
    with pytest.raises(SqlError, match=r"^UNIQUE constraint failed: t.a: SQLITE_CONSTRAINT"):
        sql.exec("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (1)")
    assert sql.exec("SELECT count(*) AS n FROM t").one()["n"] == 0


@pytest.mark.parametrize(("query", "message"), [
    ("SELECT * FROM nope", r"^no such table: nope: SQLITE_ERROR$"),
    ("SELEC 1", r"syntax error: SQLITE_ERROR$"),
    ("SELECT ?", r"Incorrect number of bindings"),
])
def test_errors_are_worded_like_workerd(sql, query, message):
    with pytest.raises(SqlError, match=message):
        sql.exec(query)


def test_binding_values(sql):
    sql.exec("CREATE TABLE v (x)")
    for value in (None, 7, 2.5, "text", b"\x00\x01", memoryview(b"mv"), True):
        sql.exec("INSERT INTO v VALUES (?)", value)
    assert [row[0] for row in sql.exec("SELECT x FROM v").raw()] == [None, 7, 2.5, "text", b"\x00\x01", b"mv", 1]
    with pytest.raises(TypeError, match="binding 2 is a list"):
        sql.exec("INSERT INTO v VALUES (?), (?)", 1, [2])
    with pytest.raises(TypeError, match="takes the query as a str"):
        sql.exec(b"SELECT 1")


# --- reserved tables and refused statements ------------------------------------------------------------

async def test_the_storage_tables_are_out_of_reach(storage, sql):
    await storage.put("secret", "kept")
    with pytest.raises(SqlError, match=r"^access to _cf_KV.key is prohibited: SQLITE_AUTH$"):
        sql.exec("SELECT * FROM _cf_KV")
    for statement in ("INSERT INTO _cf_KV VALUES ('k', x'00')", "DELETE FROM _cf_KV", "DROP TABLE _cf_METADATA",
                      "CREATE TABLE _CF_mine (x)", "ALTER TABLE _cf_KV RENAME TO mine",
                      "CREATE INDEX _cf_idx ON _cf_KV (value)", "UPDATE _cf_METADATA SET value = 1"):
        with pytest.raises(SqlError, match=r"SQLITE_AUTH$"):
            sql.exec(statement)
    sql.exec("CREATE TABLE t (x)")
    sql.exec("CREATE TRIGGER sneaky AFTER INSERT ON t BEGIN DELETE FROM _cf_KV; END")
    with pytest.raises(SqlError, match="SQLITE_AUTH"):
        sql.exec("INSERT INTO t VALUES (1)")
    with pytest.raises(SqlError, match="SQLITE_AUTH"):
        sql.exec("CREATE VIEW peek AS SELECT value FROM _cf_KV; SELECT * FROM peek")
    assert await storage.get("secret") == "kept"
    assert "_cf_KV" in [row["name"] for row in sql.exec("SELECT name FROM sqlite_master WHERE type = 'table'")]


@pytest.mark.parametrize(("statement", "message"), [
    ("BEGIN TRANSACTION", TRANSACTION_REFUSED),
    ("SAVEPOINT mine", TRANSACTION_REFUSED),
    ("COMMIT", TRANSACTION_REFUSED),
    ("ATTACH DATABASE 'other.sqlite' AS other", "ATTACH and DETACH are not allowed"),
    ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode is not allowed"),
    ("PRAGMA writable_schema = ON", "PRAGMA writable_schema is not allowed"),
])
def test_refused_statements(sql, statement, message):
    with pytest.raises(SqlError) as raised:
        sql.exec(statement)
    assert str(raised.value) == f"{message}: SQLITE_AUTH" or str(raised.value).startswith(message)


def test_harmless_pragmas_run(notes):
    assert [row["name"] for row in notes.exec("PRAGMA table_info(test_iter)")] == ["id", "val"]
    assert notes.exec("PRAGMA foreign_keys").one()["foreign_keys"] == 1  # enforced, as on Cloudflare
    notes.exec("CREATE TABLE child (parent INTEGER REFERENCES test_iter(id))")
    with pytest.raises(SqlError, match="FOREIGN KEY constraint failed: SQLITE_CONSTRAINT"):
        notes.exec("INSERT INTO child VALUES (99)")
    notes.exec("PRAGMA defer_foreign_keys = ON; INSERT INTO child VALUES (99); UPDATE child SET parent = 1")
    assert notes.exec("SELECT parent FROM child").one()["parent"] == 1


# --- limits --------------------------------------------------------------------------------------------

def test_cloudflare_sql_limits(sql):
    sql.exec("CREATE TABLE t (x)")
    with pytest.raises(SqlError, match="too many SQL variables"):
        sql.exec("SELECT " + ", ".join("?" * 101), *range(101))
    assert len(sql.exec("SELECT " + ", ".join("?" * 100), *range(100)).columnNames) == 100
    with pytest.raises(SqlError, match="string or blob too big: SQLITE_TOOBIG"):
        sql.exec("INSERT INTO t VALUES (zeroblob(?))", 2 * MIB + 100)
    with pytest.raises(SqlError, match="query string is too large"):
        sql.exec("SELECT '" + "x" * (100 * 1024) + "'")
    with pytest.raises(SqlError, match="LIKE or GLOB pattern too complex"):
        sql.exec("SELECT 'a' LIKE ?", "%" * 51)
    with pytest.raises(SqlError, match="too many columns"):
        sql.exec("CREATE TABLE wide (" + ", ".join(f"c{i}" for i in range(101)) + ")")


# --- deleteAll and closing -----------------------------------------------------------------------------

async def test_delete_all_drops_virtual_tables_with_their_shadow_tables(storage, sql):
    sql.exec("CREATE VIRTUAL TABLE docs USING fts5(body); INSERT INTO docs VALUES ('hello world')")
    sql.exec("CREATE TABLE plain (x); CREATE INDEX plain_x ON plain (x)")
    await storage.deleteAll()
    assert sql.exec("SELECT name FROM sqlite_master WHERE name NOT LIKE '\\_cf\\_%' ESCAPE '\\'").toArray() == []


def test_exec_after_close_is_refused(storage):
    storage.close()
    with pytest.raises(RuntimeError, match="storage is closed"):
        storage.sql.exec("SELECT 1")
