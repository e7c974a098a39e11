"""``edgewise kv key put|get|list|delete``: a Worker's local KV data, with wrangler's syntax."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from edge_runtime.bindings.kv import KVError, KvNamespace, open_binding

from .local_data import find_binding, local_options, open_project
from .output import fail


@click.group()
def kv() -> None:
    """Workers KV, locally: the data `edgewise dev` keeps for the Worker's kv_namespaces."""


@kv.group()
def key() -> None:
    """Put, get, list and delete keys of a namespace."""


def namespace_options(command: Any) -> Any:
    command = click.option("--namespace-id", help="The namespace's id (or preview_id) in the config.")(command)
    command = click.option("--binding", help="The namespace's binding name in the config, e.g. CACHE.")(command)
    return local_options(command)


def _namespace(binding: str | None, namespace_id: str | None, config_path: Path | None, env_name: str | None,
               persist_to: Path | None, local: bool) -> KvNamespace:
    if (binding is None) == (namespace_id is None):
        fail("name the namespace with --binding NAME or --namespace-id ID (one of them)")
    config, state = open_project(config_path, env_name, persist_to, local)
    spec = find_binding(config, "kv_namespaces", binding or str(namespace_id), also=("id", "preview_id"))
    return open_binding(spec, state)


def _run(namespace: KvNamespace, call: Any) -> Any:
    try:
        return asyncio.run(call)
    except (KVError, TypeError, ValueError) as error:
        fail(str(error))
    finally:
        namespace.close()


@key.command("put")
@click.argument("name")
@click.argument("value", required=False)
@click.option("--path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read the value from this file instead.")
@click.option("--ttl", type=int, help="Seconds the key lives (at least 60).")
@click.option("--expiration", type=int, help="When the key expires, in seconds since the epoch.")
@click.option("--metadata", help="JSON metadata stored with the key.")
@namespace_options
def put(name: str, value: str | None, path: Path | None, ttl: int | None, expiration: int | None,
        metadata: str | None, binding: str | None, namespace_id: str | None, **project: Any) -> None:
    """Write VALUE (or the file at --path) under the key NAME."""
    if (value is None) == (path is None):
        fail("give the value as an argument or with --path FILE (one of them)")
    options: dict[str, Any] = {}
    if ttl is not None:
        options["expirationTtl"] = ttl
    if expiration is not None:
        options["expiration"] = expiration
    if metadata is not None:
        try:
            options["metadata"] = json.loads(metadata)
        except json.JSONDecodeError as error:
            fail(f"--metadata must be JSON: {error}")
    namespace = _namespace(binding, namespace_id, **project)
    data: str | bytes = path.read_bytes() if path is not None else str(value)
    _run(namespace, namespace.put(name, data, options))
    click.echo(f"Wrote the key {name!r} to namespace {namespace.name} (local).", err=True)


@key.command("get")
@click.argument("name")
@click.option("--text", is_flag=True, help="Decode the value as UTF-8 text (default: the raw bytes).")
@namespace_options
def get(name: str, text: bool, binding: str | None, namespace_id: str | None, **project: Any) -> None:
    """Print the value of the key NAME ("Value not found" when there is none)."""
    namespace = _namespace(binding, namespace_id, **project)
    value = _run(namespace, namespace.get(name, "arrayBuffer"))
    if value is None:
        click.echo("Value not found")
        return
    if text:
        click.echo(bytes(value).decode("utf-8", errors="replace"))
    else:
        sys.stdout.buffer.write(bytes(value))
        sys.stdout.buffer.flush()


@key.command("list")
@click.option("--prefix", default=None, help="Only keys that start with this.")
@namespace_options
def list_keys(prefix: str | None, binding: str | None, namespace_id: str | None, **project: Any) -> None:
    """Print the namespace's keys as JSON: [{"name", "expiration"?, "metadata"?}, ...]."""
    namespace = _namespace(binding, namespace_id, **project)

    async def every_key() -> list[Any]:
        keys, cursor = [], None
        while True:
            page = await namespace.list(prefix=prefix, cursor=cursor)
            keys += page["keys"]
            if page["list_complete"]:
                return keys
            cursor = page["cursor"]

    click.echo(json.dumps(_run(namespace, every_key()), indent=2))


@key.command("delete")
@click.argument("name")
@namespace_options
def delete(name: str, binding: str | None, namespace_id: str | None, **project: Any) -> None:
    """Delete the key NAME."""
    namespace = _namespace(binding, namespace_id, **project)
    _run(namespace, namespace.delete(name))
    click.echo(f"Deleted the key {name!r} from namespace {namespace.name} (local).", err=True)
