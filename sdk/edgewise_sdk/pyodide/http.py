"""``pyodide.http`` on CPython: ``pyfetch`` and ``FetchResponse`` on top of ``workers.fetch``."""

from __future__ import annotations

from typing import Any

from edgewise_sdk.workers import fetch
from edgewise_sdk.workers import Response as FetchResponse

__all__ = ["FetchResponse", "pyfetch"]


async def pyfetch(url: str, **kwargs: Any) -> FetchResponse:
    """``await pyfetch(url, method="POST", body=..., headers={...})``: the keywords are the JS fetch init."""
    return await fetch(url, **kwargs)
