"""``edgewise vectorize create|insert|query|get-by-ids|info``: a Worker's local Vectorize indexes,
with wrangler's syntax (vectors from an NDJSON file, as ``wrangler vectorize insert --file``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from edge_runtime.bindings.vectorize import VectorizeIndex, open_index
from edge_runtime.bindings.vectorize_config import VectorizeError, create_index

from .local_data import local_options, open_project
from .output import fail

METRICS = ("cosine", "euclidean", "dot-product")


@click.group()
def vectorize() -> None:
    """Vectorize, locally: the indexes `edgewise dev` keeps for the Worker's vectorize bindings."""


def _run(index: VectorizeIndex, call: Any) -> Any:
    try:
        return asyncio.run(call)
    except (VectorizeError, ValueError, TypeError) as error:
        fail(str(error))
    finally:
        index.close()


def _index(name: str, **project: Any) -> VectorizeIndex:
    _, state = open_project(**project)
    return open_index(state, name)


@vectorize.command()
@click.argument("name")
@click.option("--dimensions", type=click.IntRange(1, 1536), required=True, help="Values per vector.")
@click.option("--metric", type=click.Choice(METRICS), required=True, help="How vectors are compared.")
@local_options
def create(name: str, dimensions: int, metric: str, **project: Any) -> None:
    """Create the empty index NAME (the index_name a [[vectorize]] binding names)."""
    _, state = open_project(**project)
    try:
        create_index(state, name, dimensions, metric)
    except ValueError as error:
        fail(str(error))
    click.echo(f"Created index {name!r} ({dimensions} dimensions, {metric}) (local).", err=True)


@vectorize.command()
@click.argument("name")
@click.option("--file", "vectors_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help='NDJSON: one {"id", "values", "metadata"?, "namespace"?} per line.')
@click.option("--upsert", is_flag=True, help="Replace vectors whose ids exist (default: skip them, as insert does).")
@local_options
def insert(name: str, vectors_file: Path, upsert: bool, **project: Any) -> None:
    """Insert (or --upsert) the vectors of an NDJSON file into NAME."""
    vectors = []
    for number, line in enumerate(vectors_file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                vectors.append(json.loads(line))
            except json.JSONDecodeError as error:
                fail(f"{vectors_file}:{number} is not JSON: {error}")
    index = _index(name, **project)
    result = _run(index, index.upsert(vectors) if upsert else index.insert(vectors))
    click.echo(json.dumps(result, indent=2))


@vectorize.command()
@click.argument("name")
@click.option("--vector", required=True, help="The query vector as JSON, e.g. [0.1, 0.2, 0.3].")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--return-values", is_flag=True)
@click.option("--return-metadata", type=click.Choice(["none", "indexed", "all"]), default="none", show_default=True)
@click.option("--namespace")
@click.option("--filter", "filter_json", help='A metadata filter as JSON, e.g. {"genre": {"$eq": "drama"}}.')
@local_options
def query(name: str, vector: str, top_k: int, return_values: bool, return_metadata: str, namespace: str | None,
          filter_json: str | None, **project: Any) -> None:
    """The vectors of NAME nearest to --vector, as JSON."""
    try:
        values = json.loads(vector)
        metadata_filter = json.loads(filter_json) if filter_json is not None else None
    except json.JSONDecodeError as error:
        fail(f"--vector and --filter are JSON: {error}")
    options: dict[str, Any] = {"topK": top_k, "returnValues": return_values, "returnMetadata": return_metadata}
    if namespace is not None:
        options["namespace"] = namespace
    if metadata_filter is not None:
        options["filter"] = metadata_filter
    index = _index(name, **project)
    click.echo(json.dumps(_run(index, index.query(values, options)), indent=2))


@vectorize.command("get-by-ids")
@click.argument("name")
@click.option("--ids", required=True, help="Comma-separated vector ids.")
@local_options
def get_by_ids(name: str, ids: str, **project: Any) -> None:
    """The stored vectors with these ids, as JSON."""
    index = _index(name, **project)
    click.echo(json.dumps(_run(index, index.getByIds(ids.split(","))), indent=2))


@vectorize.command()
@click.argument("name")
@local_options
def info(name: str, **project: Any) -> None:
    """NAME's dimensions, metric and vector count, as JSON."""
    index = _index(name, **project)
    click.echo(json.dumps(_run(index, index.describe()), indent=2, default=str))
