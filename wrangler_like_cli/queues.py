"""``edgewise queues list --local``: the Worker's queues, as its config declares them and as the store
`edgewise dev` keeps holds them (messages waiting, their bytes, the oldest), read while dev runs or not."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edge_runtime.bindings.queues.consumer import ConsumerSettings, consumers_by_queue
from edge_runtime.bindings.queues.store import Backlog, QueueStore, database_path
from edge_runtime.config import ConfigError, WorkerConfig

from .local_data import local_options, open_project
from .output import console, fail


@click.group()
def queues() -> None:
    """Queues, locally: the messages `edgewise dev` keeps for the Worker's queues."""


@queues.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@local_options
def list_queues(as_json: bool, config_path: Path | None, env_name: str | None, persist_to: Path | None,
                local: bool) -> None:
    """The queues the Worker produces to or consumes, and any other queue holding messages."""
    config, state = open_project(config_path, env_name, persist_to, local)
    consumers = _consumers(config)
    producers = _producers(config)
    store = QueueStore(database_path(state.folder("queues")))
    try:
        backlogs = {backlog.queue: backlog for backlog in store.backlogs()}
    finally:
        store.close()
    names = sorted({*producers, *consumers, *backlogs})
    rows = [_row(name, producers.get(name, []), consumers.get(name), backlogs.get(name)) for name in names]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"No queues: {config.file.name} declares none under [[queues.producers]] or "
                   "[[queues.consumers]], and none holds messages.")
        return
    table = Table("queue", "messages", "bytes", "oldest message", "producers", "consumer")
    for row in rows:
        consumer = row["consumer"]
        table.add_row(row["queue"], str(row["messages"]), str(row["bytes"]), row["oldest_message"] or "-",
                      ", ".join(row["producers"]) or "-", _describe(consumer) if consumer else "-")
    console.print(table)


def _consumers(config: WorkerConfig) -> dict[str, ConsumerSettings]:
    try:
        return consumers_by_queue([(config.name, config.file, config.queue_consumers)])
    except ConfigError as error:
        fail(str(error))
        raise  # unreachable: fail() exits


def _producers(config: WorkerConfig) -> dict[str, list[str]]:
    """queue name -> the binding names that send to it."""
    producers: dict[str, list[str]] = {}
    for spec in config.bindings:
        if spec.kind == "queues" and isinstance(spec.settings.get("queue"), str):
            producers.setdefault(spec.settings["queue"], []).append(str(spec.name))
    return producers


def _row(name: str, producers: list[str], consumer: ConsumerSettings | None, backlog: Backlog | None) -> dict[str, Any]:
    oldest = None
    if backlog is not None and backlog.oldest_sent_ms is not None:
        oldest = datetime.fromtimestamp(backlog.oldest_sent_ms / 1000, UTC).isoformat(timespec="seconds")
    return {
        "queue": name, "messages": backlog.message_count if backlog else 0,
        "bytes": backlog.message_bytes if backlog else 0, "oldest_message": oldest, "producers": producers,
        "consumer": None if consumer is None else {
            "worker": consumer.script_name, "type": "http_pull" if consumer.is_pull else "worker",
            "max_batch_size": consumer.max_batch_size, "max_batch_timeout": consumer.max_batch_timeout_s,
            "max_retries": consumer.max_retries, "dead_letter_queue": consumer.dead_letter_queue,
            "retry_delay": consumer.retry_delay_s,
        },
    }


def _describe(consumer: dict[str, Any]) -> str:
    text = (f"{consumer['worker']} ({consumer['type']}): batches of {consumer['max_batch_size']} or "
            f"{consumer['max_batch_timeout']:g} s, {consumer['max_retries']} retries")
    return text + (f", dead letters to {consumer['dead_letter_queue']}" if consumer["dead_letter_queue"] else "")
