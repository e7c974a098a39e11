"""Reading a checkpoint's wanted tensors from disk ahead of the loader, several reads at once.

The loader copies one tensor at a time out of a memory map, so on a cold page cache it waits on
one page fault after another. A few threads reading the byte ranges of the tensors the model
will take (in 32 MiB pieces, discarded) keep the disk's queue full, and the loader then finds
them in the page cache. Only whole tensors are prefetched: a tensor-parallel rank, which reads
slices, is not helped by it and is never asked to read more than its slices.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

PIECE_BYTES = 32 << 20
NUM_THREADS = 8


@contextmanager
def prefetching(files: list[Path], wants: Callable[[str], bool]) -> Iterator[None]:
    """Read the wanted tensors' bytes in the background while the body runs."""
    pool = ThreadPoolExecutor(NUM_THREADS, thread_name_prefix="edgewise-prefetch")
    try:
        for file in files:
            for start, end in _wanted_ranges(file, wants):
                for offset in range(start, end, PIECE_BYTES):
                    pool.submit(_read, file, offset, min(PIECE_BYTES, end - offset))
        yield
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _wanted_ranges(file: Path, wants: Callable[[str], bool]) -> list[tuple[int, int]]:
    """Byte ranges in the file of the wanted tensors, neighbours merged, in file order."""
    try:
        with open(file, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError, struct.error):
        return []  # the loader reports a broken file itself
    base = 8 + header_len
    spans = sorted(tuple(entry["data_offsets"]) for name, entry in header.items()
                   if name != "__metadata__" and wants(name))
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return [(base + start, base + end) for start, end in merged]


def _read(file: Path, offset: int, size: int) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.pread(fd, size, offset)
    finally:
        os.close(fd)
