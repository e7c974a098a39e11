"""Shared pieces of the R2 tests: opening the test bucket, its files on disk, and a body that arrives in chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_runtime.bindings import StateDir
from edge_runtime.bindings.r2 import R2Bucket, open_binding
from edge_runtime.config import BindingSpec

SETTINGS = {"binding": "FILES", "bucket_name": "files"}
Opener = Callable[..., R2Bucket]


@contextmanager
def bucket_opener(tmp_path: Path) -> Iterator[Opener]:
    """Opens the test bucket as often as asked, and closes every one it opened on the way out."""
    opened: list[R2Bucket] = []

    def open_(settings: dict[str, str] = SETTINGS) -> R2Bucket:
        opened.append(open_binding(BindingSpec("r2_buckets", "FILES", settings), StateDir(tmp_path)))
        return opened[-1]

    try:
        yield open_
    finally:
        for bucket in opened:
            bucket.close()


def folder(tmp_path: Path) -> Path:
    return tmp_path / "r2" / "files"


def stored_files(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """(blob files, incoming files) of the test bucket."""
    return sorted((folder(tmp_path) / "blobs").iterdir()), sorted((folder(tmp_path) / "incoming").iterdir())


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part
