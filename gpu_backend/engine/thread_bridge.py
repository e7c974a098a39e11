"""Handing results from an instance thread to the asyncio loop of the caller who waits for them."""

from __future__ import annotations

import asyncio
from typing import Any


def post(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Run ``callback(*args)`` on ``loop``; a closed loop means nobody is listening any more."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def settle(future: asyncio.Future, error: BaseException | None) -> None:
    """Resolve ``future`` (with ``error`` raised, if given) unless it is already done."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
