"""The D1 binding: Cloudflare's call shapes on a real SQLite file, D1's results, meta and errors,
transactions, concurrency from many PoPs, persistence across restarts, and wrangler-style migrations."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from config_projects import BASE_TOML, make_project
from workers import JsDict, Response

from edge_runtime.bindings import StateDir
from edge_runtime.bindings.d1 import (
    D1Database,
    D1Error,
    D1TypeError,
    database_file,
    open_binding,
    split_statements,
)
from edge_runtime.bindings.d1_migrations import (
    D1MigrationError,
    apply_migrations,
    list_migrations,
    migrations_folder,
    migrations_table,
)
from edge_runtime.config import BindingSpec, load_config
from edge_runtime.config_error import ConfigError
from edge_runtime.edge import Edge

SETTINGS = {"binding": "DB", "database_name": "notes", "database_id": "4b1c-notes"}
Opener = Callable[..., D1Database]


@pytest.fixture
async def open_db(tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[D1Database] = []

    def open_(settings: dict[str, str] = SETTINGS, name: str = "DB") -> D1Database:
        opened.append(open_binding(BindingSpec("d1_databases", name, settings), StateDir(tmp_path)))
        return opened[-1]

    yield open_
    for db in opened:
        db.close()


@pytest.fixture
async def db(open_db: Opener) -> D1Database:
    db = open_db()
    await db.exec("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, stars REAL, data BLOB)")
    return db


async def test_run_and_all_give_d1_results_with_rows_read_by_attribute_or_key(db: D1Database) -> None:
    inserted = await db.prepare("INSERT INTO notes (body, stars) VALUES (?, ?)").bind("hello", 4.5).run()
    assert inserted.success is True and inserted.results == []
    assert (inserted.meta.changes, inserted.meta.last_row_id, inserted.meta.rows_written) == (1, 1, 1)
    assert inserted.meta.changed_db is True and inserted.meta.served_by == "edgewise-d1"
    await db.prepare("INSERT INTO notes (body) VALUES (?)").bind("world").run()

    result = await db.prepare("SELECT id, body, stars FROM notes ORDER BY id").all()
    assert isinstance(result, JsDict) and result.success is True
    assert result.results == [{"id": 1, "body": "hello", "stars": 4.5}, {"id": 2, "body": "world", "stars": None}]
    row = result.results[0]
    assert isinstance(row, JsDict) and row.body == row["body"] == "hello"
    meta = result.meta
    assert (meta.rows_read, meta.rows_written, meta.changes, meta.changed_db) == (2, 0, 0, False)
    assert isinstance(meta.duration, float) and meta.duration >= 0 and meta.size_after >= 4096
    assert json.loads(await Response.json(row).text()) == {"id": 1, "body": "hello", "stars": 4.5}
    assert json.loads(await Response.json(result).text())["results"][1]["body"] == "world"


async def test_a_schema_change_counts_as_a_change_of_the_database(open_db: Opener) -> None:
    db = open_db()
    created = await db.prepare("CREATE TABLE t (n INTEGER)").run()
    assert created.meta.changed_db is True and created.meta.changes == 0
    assert (await db.prepare("SELECT * FROM t").run()).meta.changed_db is False


async def test_bind_takes_d1s_value_types_and_returns_a_new_statement(db: D1Database) -> None:
    insert = db.prepare("INSERT INTO notes (body, stars, data) VALUES (?, ?, ?)")
    bound = insert.bind("bytes", True, b"\x00\xff")
    assert bound is not insert and insert.params == () and bound.params == ("bytes", 1, b"\x00\xff")
    await bound.run()
    await insert.bind("list of bytes", 2**62, [1, 2, 3]).run()
    await insert.bind("none", None, None).run()
    rows = await db.prepare("SELECT body, stars, data FROM notes ORDER BY id").raw()
    assert rows == [["bytes", 1, [0, 255]], ["list of bytes", 2**62, [1, 2, 3]], ["none", None, None]]
    assert json.loads(await Response.json(rows).text())[0][2] == [0, 255]  # a BLOB stays JSON-able


@pytest.mark.parametrize("value", [(1, 2), {"a": 1}, object(), 2**63, [1, 300], bytearray(b"x")])
async def test_bind_refuses_other_values_with_d1s_type_error(db: D1Database, value: object) -> None:
    with pytest.raises(D1TypeError, match=r"^D1_TYPE_ERROR: Type '\w+' not supported for value"):
        db.prepare("SELECT ?").bind(value)


async def test_first_gives_the_first_row_or_one_column_of_it(db: D1Database) -> None:
    await db.exec("INSERT INTO notes (body) VALUES ('a'); INSERT INTO notes (body) VALUES ('b');")
    select = db.prepare("SELECT id, body FROM notes ORDER BY id")
    assert await select.first() == {"id": 1, "body": "a"} and (await select.first()).body == "a"
    assert await select.first("body") == "a"
    assert await db.prepare("SELECT body FROM notes WHERE id = ?").bind(99).first() is None
    assert await db.prepare("SELECT body FROM notes WHERE id = ?").bind(99).first("body") is None
    with pytest.raises(D1Error, match=r"^D1_COLUMN_NOTFOUND: Column not found \(title\)$"):
        await select.first("title")


async def test_raw_gives_lists_with_column_names_first_when_asked(db: D1Database) -> None:
    await db.prepare("INSERT INTO notes (body, stars) VALUES (?, ?)").bind("a", 1.5).run()
    select = db.prepare("SELECT body, stars FROM notes")
    assert await select.raw() == [["a", 1.5]]
    assert await select.raw(columnNames=True) == [["body", "stars"], ["a", 1.5]]
    assert await select.raw({"columnNames": True}) == [["body", "stars"], ["a", 1.5]]
    assert await select.raw({"columnNames": False}) == [["a", 1.5]]
    assert await db.prepare("SELECT body FROM notes WHERE id = 99").raw(columnNames=True) == [["body"]]
    with pytest.raises(TypeError, match="unknown option 'column_names'"):
        await select.raw(column_names=True)


async def test_sql_errors_carry_d1s_prefix_and_a_failed_statement_changes_nothing(db: D1Database) -> None:
    with pytest.raises(D1Error) as caught:
        await db.prepare("SELECT * FROM missing").all()
    assert str(caught.value) == "D1_ERROR: no such table: missing: SQLITE_ERROR"
    await db.prepare("INSERT INTO notes (id, body) VALUES (1, 'kept')").run()
    with pytest.raises(D1Error, match=r"^D1_ERROR: UNIQUE constraint failed: notes.id: SQLITE_CONSTRAINT$"):
        await db.prepare("INSERT INTO notes (id, body) VALUES (2, 'x'), (3, 'y'), (1, 'clash')").run()
    assert await db.prepare("SELECT body FROM notes").raw() == [["kept"]]


async def test_foreign_keys_are_enforced_as_in_d1(open_db: Opener) -> None:
    db = open_db()
    await db.exec("CREATE TABLE a (id INTEGER PRIMARY KEY); CREATE TABLE b (a_id INTEGER REFERENCES a (id));")
    with pytest.raises(D1Error, match=r"^D1_ERROR: FOREIGN KEY constraint failed: SQLITE_CONSTRAINT$"):
        await db.prepare("INSERT INTO b VALUES (?)").bind(1).run()


async def test_a_wrong_number_of_bound_values_is_a_d1_error(db: D1Database) -> None:
    with pytest.raises(D1Error, match=r"^D1_ERROR: Wrong number of parameter bindings for SQL query.*uses 2"):
        await db.prepare("INSERT INTO notes (body, stars) VALUES (?, ?)").bind("only one").run()
    with pytest.raises(D1Error, match=r"^D1_ERROR: Wrong number of parameter bindings"):
        await db.prepare("SELECT ?").bind(1, 2).all()


@pytest.mark.parametrize("sql", ["BEGIN TRANSACTION", "COMMIT", "SAVEPOINT s", "ATTACH 'other.db' AS other"])
async def test_statements_that_escape_d1_are_refused(db: D1Database, sql: str) -> None:
    with pytest.raises(D1Error, match=r"^D1_ERROR: .* not allowed in D1.*: SQLITE_AUTH$"):
        await db.prepare(sql).run()
    await db.prepare("INSERT INTO notes (body) VALUES ('after')").run()  # the shared connection is still usable
    assert await db.prepare("SELECT count(*) AS n FROM notes").first("n") == 1


async def test_batch_runs_all_statements_in_one_transaction(db: D1Database) -> None:
    insert = db.prepare("INSERT INTO notes (body) VALUES (?)")
    results = await db.batch([insert.bind("a"), insert.bind("b"), db.prepare("SELECT body FROM notes")])
    assert [result.meta.changes for result in results] == [1, 1, 0]
    assert results[2].results == [{"body": "a"}, {"body": "b"}]

    with pytest.raises(D1Error, match=r"^D1_ERROR: NOT NULL constraint failed: notes.body: SQLITE_CONSTRAINT"):
        await db.batch([insert.bind("c"), db.prepare("UPDATE notes SET body = 'changed'"), insert.bind(None)])
    assert await db.prepare("SELECT body FROM notes ORDER BY id").raw() == [["a"], ["b"]]  # all rolled back
    assert await db.batch([]) == []


async def test_batch_takes_only_a_list_of_this_databases_statements(open_db: Opener, db: D1Database) -> None:
    with pytest.raises(TypeError, match="takes a list of prepared statements, got tuple"):
        await db.batch((db.prepare("SELECT 1"),))
    with pytest.raises(TypeError, match="item 1 is a str"):
        await db.batch([db.prepare("SELECT 1"), "SELECT 2"])
    other = open_db({"binding": "OTHER", "database_id": "other"}, name="OTHER")
    with pytest.raises(TypeError, match="item 0 was prepared on another D1 database"):
        await db.batch([other.prepare("SELECT 1")])


async def test_exec_runs_a_script_statement_by_statement(db: D1Database) -> None:
    script = """
        INSERT INTO notes (body) VALUES ('semi;colon');  -- a comment; with a semicolon
        CREATE TRIGGER shout AFTER INSERT ON notes BEGIN
            UPDATE notes SET body = upper(body) WHERE id = new.id;
        END;
        INSERT INTO notes (body) VALUES ('quiet')
    """
    outcome = await db.exec(script)
    assert outcome.count == 3 and isinstance(outcome.duration, float)
    assert await db.prepare("SELECT body FROM notes ORDER BY id").raw() == [["semi;colon"], ["QUIET"]]
    with pytest.raises(D1Error) as caught:
        await db.exec("INSERT INTO notes (body) VALUES ('kept');\nSELECT * FROM missing;\nSELECT 1;")
    assert str(caught.value) == ("D1_EXEC_ERROR: Error in line 2: SELECT * FROM missing;: "
                                 "no such table: missing: SQLITE_ERROR")
    assert await db.prepare("SELECT count(*) AS n FROM notes").first("n") == 3  # D1's exec is not atomic


def test_split_statements_gives_each_statement_with_its_line() -> None:
    assert list(split_statements("SELECT 1;\n\n-- note\nSELECT ';'\n;SELECT 2")) == [
        (1, "SELECT 1;"), (3, "-- note\nSELECT ';'\n;"), (5, "SELECT 2")]
    assert list(split_statements("  -- only a comment\n ; ")) == []


async def test_dump_gives_a_sqlite_file_of_the_data(db: D1Database, tmp_path: Path) -> None:
    await db.prepare("INSERT INTO notes (body) VALUES (?)").bind("dumped").run()
    dumped = await db.dump()
    assert isinstance(dumped, bytes) and dumped.startswith(b"SQLite format 3\x00")
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(dumped)
    with sqlite3.connect(copy) as connection:
        assert connection.execute("SELECT body FROM notes").fetchall() == [("dumped",)]
    connection.close()


async def test_a_session_prepares_batches_and_keeps_a_bookmark_that_grows_with_writes(db: D1Database) -> None:
    session = db.withSession()
    assert session.getBookmark() is None and db.withSession("first-primary").getBookmark() is None
    await session.prepare("SELECT * FROM notes").all()
    read = session.getBookmark()
    assert isinstance(read, str)
    await session.prepare("INSERT INTO notes (body) VALUES (?)").bind("a").run()
    written = session.getBookmark()
    assert written > read
    await session.batch([session.prepare("INSERT INTO notes (body) VALUES ('b')")])
    assert session.getBookmark() > written
    assert db.withSession(written).getBookmark() == written  # a session started from a bookmark
    assert await db.withSession(written).prepare("SELECT count(*) AS n FROM notes").first("n") == 2
    with pytest.raises(TypeError, match="takes a bookmark or one of first-unconstrained"):
        db.withSession(5)


async def test_the_database_is_one_file_named_by_its_id_and_survives_reopening(open_db: Opener, tmp_path: Path
                                                                                ) -> None:
    db = open_db()
    await db.exec("CREATE TABLE kept (n INTEGER); INSERT INTO kept VALUES (7);")
    db.close()
    assert (tmp_path / "d1" / "4b1c-notes.sqlite").is_file()
    with pytest.raises(D1Error, match="env.DB is closed"):
        await db.prepare("SELECT 1").all()
    assert await open_db().prepare("SELECT n FROM kept").first("n") == 7


@pytest.mark.parametrize(("settings", "name"), [
    ({"binding": "DB", "database_id": "abc-123"}, "abc-123.sqlite"),
    ({"binding": "DB", "database_name": "notes"}, "notes.sqlite"),
    ({"binding": "DB"}, "DB.sqlite"),
])
def test_the_file_is_named_by_id_then_name_then_binding(tmp_path: Path, settings: dict[str, str], name: str) -> None:
    assert database_file(BindingSpec("d1_databases", "DB", settings), StateDir(tmp_path)) == tmp_path / "d1" / name


def test_an_id_that_cannot_name_a_file_is_a_config_error(tmp_path: Path) -> None:
    spec = BindingSpec("d1_databases", "DB", {"binding": "DB", "database_id": "../escape"})
    with pytest.raises(ConfigError, match="database_id must be a string of letters"):
        open_binding(spec, StateDir(tmp_path))


async def test_six_pops_of_fifty_writers_lose_nothing(open_db: Opener) -> None:
    db = open_db()
    await db.exec("CREATE TABLE hits (pop INTEGER, writer INTEGER); CREATE TABLE counter (n INTEGER);"
                  "INSERT INTO counter VALUES (0);")
    # as the CLI would, another connection to the same file writes meanwhile
    other = open_db()

    async def write(pop: int, writer: int) -> None:
        target = other if pop % 2 else db
        await target.prepare("INSERT INTO hits VALUES (?, ?)").bind(pop, writer).run()
        await target.prepare("UPDATE counter SET n = n + 1").run()

    await asyncio.gather(*(write(pop, writer) for pop in range(6) for writer in range(50)))
    assert await db.prepare("SELECT count(*) AS n FROM hits").first("n") == 300
    assert await db.prepare("SELECT count(DISTINCT pop * 100 + writer) AS n FROM hits").first("n") == 300
    assert await other.prepare("SELECT n FROM counter").first("n") == 300


async def test_a_slow_query_does_not_block_the_event_loop(db: D1Database) -> None:
    slow = db.prepare("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
                      "SELECT count(*) AS n FROM c")
    query = asyncio.create_task(slow.first("n"))
    started, ticks = time.perf_counter(), 0
    while not query.done():
        await asyncio.sleep(0.005)
        ticks += 1
    assert await query == 3000000
    assert ticks >= 5, f"only {ticks} ticks in {time.perf_counter() - started:.3f} s"


# --- migrations ------------------------------------------------------------------------------------

def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


def test_migrations_apply_in_name_order_once_each_and_are_recorded(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations", {
        "0002_seed.sql": "INSERT INTO notes (body) VALUES ('first; note');\n",
        "0001_init.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);",
        "README.md": "not a migration"})
    db_file = tmp_path / "d1" / "db.sqlite"
    db_file.parent.mkdir()
    assert list_migrations(db_file, folder) == ["0001_init.sql", "0002_seed.sql"]
    assert not db_file.exists()  # listing creates nothing
    assert apply_migrations(db_file, folder) == ["0001_init.sql", "0002_seed.sql"]
    assert list_migrations(db_file, folder) == [] and apply_migrations(db_file, folder) == []
    write_migrations(folder, {"0003_more.sql": "ALTER TABLE notes ADD COLUMN stars REAL;"})
    assert list_migrations(db_file, folder) == ["0003_more.sql"]
    assert apply_migrations(db_file, folder) == ["0003_more.sql"]
    with sqlite3.connect(db_file) as connection:
        assert connection.execute("SELECT id, name FROM d1_migrations ORDER BY id").fetchall() == [
            (1, "0001_init.sql"), (2, "0002_seed.sql"), (3, "0003_more.sql")]
        assert [column[1] for column in connection.execute("PRAGMA table_info(d1_migrations)")] == [
            "id", "name", "applied_at"]
        assert connection.execute("SELECT body, stars FROM notes").fetchall() == [("first; note", None)]
    connection.close()


def test_a_failing_migration_is_rolled_back_and_those_before_it_stay(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "1_ok.sql": "CREATE TABLE a (n INTEGER);",
        "2_bad.sql": "CREATE TABLE b (n INTEGER);\nINSERT INTO missing VALUES (1);",
        "3_later.sql": "CREATE TABLE c (n INTEGER);"})
    db_file = tmp_path / "db.sqlite"
    failure = r"Migration 2_bad.sql failed at line 2: no such table: missing"
    with pytest.raises(D1MigrationError, match=failure) as caught:
        apply_migrations(db_file, folder, table="schema_log")
    assert caught.value.applied == ["1_ok.sql"]
    assert list_migrations(db_file, folder, table="schema_log") == ["2_bad.sql", "3_later.sql"]
    with sqlite3.connect(db_file) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    connection.close()
    assert {"a", "schema_log"} <= tables and not {"b", "c", "d1_migrations"} & tables


def test_migration_settings_default_as_wrangler_and_a_missing_folder_says_so(tmp_path: Path) -> None:
    assert migrations_folder({}, tmp_path) == tmp_path / "migrations"
    assert migrations_folder({"migrations_dir": "db/migrations"}, tmp_path) == tmp_path / "db" / "migrations"
    assert migrations_table({}) == "d1_migrations" and migrations_table({"migrations_table": "log"}) == "log"
    with pytest.raises(D1MigrationError, match="No migrations folder at .*: create it, or set migrations_dir"):
        list_migrations(tmp_path / "db.sqlite", tmp_path / "migrations")


async def test_migrations_applied_beside_a_running_binding_are_seen_by_it(open_db: Opener, tmp_path: Path) -> None:
    db = open_db()
    folder = write_migrations(tmp_path / "migrations", {"0001.sql": "CREATE TABLE t (n INTEGER); "
                                                                    "INSERT INTO t VALUES (42);"})
    spec = BindingSpec("d1_databases", "DB", SETTINGS)
    assert apply_migrations(database_file(spec, StateDir(tmp_path)), folder) == ["0001.sql"]
    assert await db.prepare("SELECT n FROM t").first("n") == 42


# --- end to end: a Worker on the edge, then a restart ------------------------------------------------

NOTES_WORKER = """\
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await self.env.DB.exec("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
        if request.method == "POST":
            await self.env.DB.prepare("INSERT INTO notes (body) VALUES (?)").bind(await request.text()).run()
        return Response.json((await self.env.DB.prepare("SELECT id, body FROM notes ORDER BY id").all()).results)
"""

NOTES_TOML = BASE_TOML + """
[[d1_databases]]
binding = "DB"
database_name = "notes"
database_id = "6f0e8a52-notes"
"""


async def call_edge(project: Path, method: str, body: str = "") -> httpx.Response:
    edge = Edge(load_config(project))
    try:
        transport = httpx.ASGITransport(app=edge.front_door)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return await client.request(method, "/", content=body)
    finally:
        await edge.aclose()


async def test_a_worker_writes_and_reads_notes_that_survive_a_restart(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"wrangler.toml": NOTES_TOML, "src/entry.py": NOTES_WORKER})
    first = await call_edge(project, "POST", "buy milk")
    assert first.status_code == 200, first.text
    assert first.json() == [{"id": 1, "body": "buy milk"}]
    assert (tmp_path / ".wrangler" / "state" / "v3" / "d1" / "6f0e8a52-notes.sqlite").is_file()

    restarted = await call_edge(project, "GET")
    assert restarted.status_code == 200 and restarted.json() == [{"id": 1, "body": "buy milk"}]
