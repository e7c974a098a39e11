"""Handing results from an instance thread to the asyncio loop of the caller who waits for them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from .outputs import EngineOutput


def post(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Run ``callback(*args)`` on ``loop``; a closed loop means nobody is listening any more."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


async def until_finished(outputs: asyncio.Queue) -> AsyncIterator[EngineOutput]:
    """The request's outputs as they are posted to ``outputs``, up to the finished one; an
    exception posted there instead is raised."""
    while True:
        item = await outputs.get()
        if isinstance(item, BaseException):
            raise item
        yield item
        if item.finished:
            return


def settle(future: asyncio.Future, error: BaseException | None) -> None:
    """Resolve ``future`` (with ``error`` raised, if given) unless it is already done."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
