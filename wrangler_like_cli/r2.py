"""``edgewise r2 object put|get|delete BUCKET/KEY``: a Worker's local R2 objects, with wrangler's syntax."""

from __future__ import annotations

import asyncio
import mimetypes
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from edge_runtime.bindings.r2 import R2Bucket, open_binding
from edge_runtime.bindings.r2_options import R2Error

from .local_data import find_binding, local_options, open_project
from .output import fail

CHUNK = 1 << 20


@click.group()
def r2() -> None:
    """R2, locally: the objects `edgewise dev` keeps for the Worker's r2_buckets."""


@r2.group("object")
def object_() -> None:
    """Put, get and delete objects, named BUCKET/KEY."""


def _bucket(path: str, config_path: Path | None, env_name: str | None, persist_to: Path | None,
            local: bool) -> tuple[R2Bucket, str]:
    bucket_name, slash, key = path.partition("/")
    if not slash or not key:
        fail(f"name the object as BUCKET/KEY, e.g. files/report.pdf, not {path!r}")
    config, state = open_project(config_path, env_name, persist_to, local)
    return open_binding(find_binding(config, "r2_buckets", bucket_name, also=("bucket_name",)), state), key


def _run(bucket: R2Bucket, call: Any) -> Any:
    try:
        return asyncio.run(call)
    except (R2Error, TypeError, ValueError) as error:
        fail(str(error))
    finally:
        bucket.close()


async def _chunks(source: Any) -> AsyncIterator[bytes]:
    while chunk := source.read(CHUNK):
        yield chunk


@object_.command()
@click.argument("path", metavar="BUCKET/KEY")
@click.option("--file", "-f", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The file to upload (default: standard input).")
@click.option("--pipe", "-p", is_flag=True, help="Read the object from standard input.")
@click.option("--content-type", "-ct", help="The object's Content-Type (default: guessed from --file).")
@local_options
def put(path: str, file: Path | None, pipe: bool, content_type: str | None, **project: Any) -> None:
    """Upload a file (or standard input) as BUCKET/KEY, streamed, never held whole in memory."""
    if file is None and not pipe:
        fail("give the object with --file PATH or --pipe (standard input)")
    bucket, key = _bucket(path, **project)
    content_type = content_type or (mimetypes.guess_type(file.name)[0] if file is not None else None)
    http_metadata = {"contentType": content_type} if content_type else {}

    async def upload() -> Any:
        with (file.open("rb") if file is not None else sys.stdin.buffer) as source:
            return await bucket.put(key, _chunks(source), httpMetadata=http_metadata)

    stored = _run(bucket, upload())
    click.echo(f"Uploaded {path} ({stored.size} bytes, etag {stored.etag}) (local).", err=True)


@object_.command()
@click.argument("path", metavar="BUCKET/KEY")
@click.option("--file", "-f", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the object to this file (default: standard output).")
@local_options
def get(path: str, file: Path | None, **project: Any) -> None:
    """Download BUCKET/KEY to a file or standard output, streamed."""
    bucket, key = _bucket(path, **project)

    async def download() -> bool:
        found = await bucket.get(key)
        if found is None:
            return False
        with (file.open("wb") if file is not None else sys.stdout.buffer) as target:
            async for chunk in found.body:
                target.write(chunk)
        return True

    if not _run(bucket, download()):
        fail(f"The specified key does not exist: {path}")


@object_.command()
@click.argument("path", metavar="BUCKET/KEY")
@local_options
def delete(path: str, **project: Any) -> None:
    """Delete BUCKET/KEY."""
    bucket, key = _bucket(path, **project)
    _run(bucket, bucket.delete(key))
    click.echo(f"Deleted {path} (local).", err=True)
