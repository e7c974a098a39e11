"""A progress bar over bytes (weights loaded, weights compressed), drawn on stderr by rich."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Advance = Callable[[int], None]  # called with the bytes just done


@contextmanager
def byte_progress(label: str, total_bytes: int, show: bool) -> Iterator[Advance]:
    """A rich bar of ``total_bytes``, filled at the end (bytes never read, such as headers or other
    ranks' slices, count as done); a no-op unless ``show`` (stderr is a terminal)."""
    if not show:
        yield lambda num_bytes: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    columns: list[Any] = [TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("bytes", total=total_bytes)
        yield lambda num_bytes: bar.advance(task, num_bytes)
        bar.update(task, completed=total_bytes)
