"""``edgewise d1 execute`` and ``edgewise d1 migrations create|list|apply``: a Worker's local D1
databases, with wrangler's syntax and its ``d1_migrations`` table."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edge_runtime.bindings.d1 import (
    D1Database,
    D1Error,
    database_file,
    open_binding,
    split_statements,
)
from edge_runtime.bindings.d1_migrations import (
    apply_migrations,
    list_migrations,
    migrations_folder,
    migrations_table,
)
from edge_runtime.config import BindingSpec, WorkerConfig

from .local_data import find_binding, local_options, open_project
from .output import console, fail


@click.group()
def d1() -> None:
    """D1, locally: the SQLite databases `edgewise dev` keeps for the Worker's d1_databases."""


def _database(name: str, config_path: Path | None, env_name: str | None, persist_to: Path | None,
              local: bool) -> tuple[WorkerConfig, BindingSpec, Any]:
    config, state = open_project(config_path, env_name, persist_to, local)
    spec = find_binding(config, "d1_databases", name, also=("database_name", "database_id"))
    return config, spec, state


@d1.command()
@click.argument("database")
@click.option("--command", "sql", help="The SQL to run (one or more statements).")
@click.option("--file", "sql_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of SQL to run.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON, as wrangler does.")
@local_options
def execute(database: str, sql: str | None, sql_file: Path | None, as_json: bool, **project: Any) -> None:
    """Run SQL on DATABASE (its binding, database_name or database_id)."""
    if (sql is None) == (sql_file is None):
        fail("give the SQL with --command or --file (one of them)")
    text = sql if sql is not None else sql_file.read_text(encoding="utf-8")  # type: ignore[union-attr]
    _, spec, state = _database(database, **project)
    db = open_binding(spec, state)
    try:
        results = asyncio.run(_execute(db, text))
    except D1Error as error:
        fail(str(error))
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps(results, indent=2, default=str))
        return
    for result in results:
        if result["results"]:
            _print_rows(result["results"])
    changes = sum(result["meta"]["changes"] for result in results)
    console.print(f"Executed {len(results)} statement(s) on {spec.name} (local); {changes} row(s) changed.",
                  markup=False)


async def _execute(db: D1Database, text: str) -> list[Any]:
    statements = [statement for _, statement in split_statements(text)]
    if not statements:
        raise D1Error("D1_ERROR: No SQL statements to run")
    return await db.batch([db.prepare(statement) for statement in statements])


def _print_rows(rows: list[dict[str, Any]]) -> None:
    table = Table(*rows[0].keys())
    for row in rows:
        table.add_row(*("NULL" if value is None else str(value) for value in row.values()))
    console.print(table)


@d1.group()
def migrations() -> None:
    """Create, list and apply the SQL files of a database's migrations_dir."""


@migrations.command()
@click.argument("database")
@click.argument("message")
@local_options
def create(database: str, message: str, **project: Any) -> None:
    """Add an empty migration file NNNN_MESSAGE.sql to DATABASE's migrations_dir."""
    config, spec, _ = _database(database, **project)
    folder = migrations_folder(spec.settings, config.root)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(match.group(1)) for path in folder.glob("*.sql") if (match := re.match(r"(\d+)", path.name))]
    name = f"{max(numbers, default=0) + 1:04d}_{re.sub(r'[^A-Za-z0-9]+', '_', message).strip('_')}.sql"
    (folder / name).write_text(f"-- Migration number: {name[:4]}\n")
    console.print(f"Created {folder / name}", markup=False)


@migrations.command("list")
@click.argument("database")
@local_options
def list_(database: str, **project: Any) -> None:
    """List DATABASE's migrations not applied yet."""
    config, spec, state = _database(database, **project)
    try:
        pending = list_migrations(database_file(spec, state), migrations_folder(spec.settings, config.root),
                                  migrations_table(spec.settings))
    except D1Error as error:
        fail(str(error))
    console.print("\n".join(pending) if pending else "No migrations to apply!", markup=False)


@migrations.command()
@click.argument("database")
@local_options
def apply(database: str, **project: Any) -> None:
    """Apply DATABASE's unapplied migrations in order, each in its own transaction."""
    config, spec, state = _database(database, **project)
    try:
        applied = apply_migrations(database_file(spec, state), migrations_folder(spec.settings, config.root),
                                   migrations_table(spec.settings))
    except D1Error as error:
        fail(str(error))
    for name in applied:
        console.print(f"✅ {name}", markup=False)
    console.print(f"Applied {len(applied)} migration(s) to {spec.name} (local)." if applied
                  else "No migrations to apply!", markup=False)
