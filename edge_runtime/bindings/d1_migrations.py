"""D1 migrations, as ``wrangler d1 migrations list/apply`` run them (for the CLI): the ``.sql`` files of a
database's migrations folder, applied in name order, each in one transaction with its record in the
migrations table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .d1 import BUSY_TIMEOUT_S, D1Error, open_connection, split_statements

MIGRATIONS_DIR = "migrations"
MIGRATIONS_TABLE = "d1_migrations"


class D1MigrationError(D1Error):
    """A migrations folder that cannot be listed or a migration that failed; ``applied`` lists those that were."""

    def __init__(self, message: str, applied: list[str] | None = None) -> None:
        super().__init__(message)
        self.applied = applied or []


def migrations_folder(settings: Mapping[str, Any], config_root: Path) -> Path:
    """``migrations_dir`` of a ``[[d1_databases]]`` entry (default ``migrations``), beside the config."""
    return config_root / settings.get("migrations_dir", MIGRATIONS_DIR)


def migrations_table(settings: Mapping[str, Any]) -> str:
    return settings.get("migrations_table", MIGRATIONS_TABLE)


def _migration_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise D1MigrationError(f"No migrations folder at {folder}: create it, or set migrations_dir in the "
                               f"[[d1_databases]] entry")
    return sorted(path.name for path in folder.glob("*.sql") if path.is_file())


def _quoted(table: str) -> str:
    return '"' + table.replace('"', '""') + '"'


def _applied_names(connection: sqlite3.Connection, table: str) -> set[str]:
    exists = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    if exists.fetchone() is None:
        return set()
    return {name for (name,) in connection.execute(f"SELECT name FROM {_quoted(table)}")}


def list_migrations(db_file: Path, folder: Path, table: str = MIGRATIONS_TABLE) -> list[str]:
    """The ``.sql`` files of ``folder`` not yet applied to ``db_file``, in name order (creates nothing)."""
    names = _migration_names(folder)
    if not db_file.exists():
        return names
    connection = sqlite3.connect(f"{db_file.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        applied = _applied_names(connection, table)
    finally:
        connection.close()
    return [name for name in names if name not in applied]


def apply_migrations(db_file: Path, folder: Path, table: str = MIGRATIONS_TABLE) -> list[str]:
    """Apply the unapplied migrations in name order, each file and its record in one transaction.

    Returns the names applied. A failing file is rolled back and raises ``D1MigrationError`` (those
    before it stay applied, listed in ``error.applied``).
    """
    names = list_migrations(db_file, folder, table)
    connection = open_connection(db_file)
    applied: list[str] = []
    try:
        connection.execute(f"CREATE TABLE IF NOT EXISTS {_quoted(table)} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                           "name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)")
        for name in names:
            _apply_one(connection, folder / name, table, applied)
            applied.append(name)
    finally:
        connection.close()
    return applied


def _apply_one(connection: sqlite3.Connection, file: Path, table: str, applied: list[str]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        for line, sql in split_statements(file.read_text()):
            try:
                connection.execute(sql)
            except sqlite3.Error as error:
                raise D1MigrationError(f"Migration {file.name} failed at line {line}: {error}; it was rolled back "
                                       f"({len(applied)} before it applied)", applied) from error
        connection.execute(f"INSERT INTO {_quoted(table)} (name) VALUES (?)", (file.name,))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
