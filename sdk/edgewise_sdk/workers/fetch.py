"""``fetch``: outbound subrequests from a Worker, on httpx, with Cloudflare's keyword-only options."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from http import HTTPMethod
from typing import Any

import httpx

from . import _state
from .body import BodyInit
from .headers import Headers, HeadersInit
from .request import Request
from .response import Response

_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
_REDIRECT_MODES = ("follow", "manual", "error")
_DECODED_HEADERS = ("content-encoding", "content-length")


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        # Redirects are followed by hand so that redirect="manual"/"error" can be honoured per call.
        client = httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(60.0, connect=10.0))
        for closed in [other for other in _clients if other.is_closed()]:
            del _clients[closed]  # its connections died with it
        _clients[loop] = client
    return client


async def fetch(
    resource: str | Request,
    *,
    method: str | HTTPMethod | None = None,
    headers: HeadersInit = None,
    body: BodyInit = None,
    redirect: str | None = None,
    cf: dict[str, Any] | None = None,
    fetcher: Any = None,
    **other: Any,
) -> Response:
    """``await fetch(url, method="POST", body="x", headers={...})``; options are keywords, not a dict."""
    request = Request(resource, method=method, headers=headers, body=body, redirect=redirect, cf=cf)
    if request.redirect not in _REDIRECT_MODES:
        raise TypeError(f"Invalid redirect value {request.redirect!r}: use one of {_REDIRECT_MODES}")
    if fetcher is not None:
        return await fetcher(request)
    budget = _state.subrequests()
    if budget is not None:
        budget.take()
    return await _send(request)


async def _send(request: Request) -> Response:
    client = _client()
    outgoing = client.build_request(
        str(request.method), request.url, headers=request.headers.raw_items(), content=await _content(request)
    )
    try:
        upstream = await client.send(outgoing, stream=True, follow_redirects=request.redirect == "follow")
    except httpx.HTTPError as error:
        raise OSError(f"fetch {request.method} {request.url} failed: {error}") from error
    if request.redirect == "error" and upstream.is_redirect:
        await upstream.aclose()
        raise OSError(f"fetch {request.url}: redirect response received with redirect mode 'error'")
    # The body is handed over decoded (as JS fetch does), so the encoding headers no longer apply.
    headers = Headers(
        (name, value) for name, value in upstream.headers.multi_items() if name.lower() not in _DECODED_HEADERS
    )
    return Response._from_parts(
        upstream.status_code, headers, _UpstreamBody(upstream), str(upstream.url), redirected=bool(upstream.history)
    )


async def _content(request: Request) -> bytes | None:
    if request._body is None:
        return None
    return await request.bytes()


class _UpstreamBody:
    """The upstream body, read lazily; a body nobody reads still gives its connection back to the pool."""

    def __init__(self, upstream: httpx.Response) -> None:
        self._upstream = upstream
        self._loop = asyncio.get_running_loop()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._upstream.aiter_bytes():
                yield chunk
        except httpx.HTTPError as error:
            raise OSError(f"fetch {self._upstream.url}: body read failed: {error}") from error
        finally:
            await self._upstream.aclose()

    def __del__(self) -> None:
        # Without this, ~100 fetches whose body is never read (only `.status`) exhaust httpx's pool.
        if not self._upstream.is_closed and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_close_later, self._upstream)


_closing: set[asyncio.Task[None]] = set()


def _close_later(upstream: httpx.Response) -> None:
    task = asyncio.get_running_loop().create_task(upstream.aclose())
    _closing.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(_closing.discard)
