"""Moves bytes between ASGI and the SDK: request bodies in (with the size limit), responses out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from edgewise_sdk.workers import Response

from .errors import payload_too_large

Receive = Any
Send = Any


def declared_length(headers: Any) -> int | None:
    value = headers.get("content-length")
    return int(value) if value and value.isdigit() else None


class IncomingBody:
    """The request body, received lazily from ASGI as the Worker reads it; past the limit it raises 413."""

    def __init__(self, receive: Receive, limit_bytes: int) -> None:
        self._receive = receive
        self._limit_bytes = limit_bytes
        self.complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        while not self.complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise OSError("The client disconnected before sending the whole request body")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self._limit_bytes:
                raise payload_too_large(self._limit_bytes)
            self.complete = not message.get("more_body", False)
            if chunk:
                yield chunk


def request_body(headers: Any, receive: Receive, limit_bytes: int) -> IncomingBody | None:
    """A lazy body stream, or None when the request has none; a declared length over the limit is a 413."""
    length = declared_length(headers)
    if length is not None and length > limit_bytes:
        raise payload_too_large(limit_bytes)
    if length == 0 or (length is None and "transfer-encoding" not in headers):
        return None
    return IncomingBody(receive, limit_bytes)


def raw_headers(response: Response, ray_id: str) -> list[tuple[bytes, bytes]]:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers.raw_items()]
    headers.append((b"cf-ray", ray_id.encode()))
    return headers


async def send_response(send: Send, receive: Receive, response: Response, ray_id: str, head_only: bool,
                        body_in: IncomingBody | None) -> None:
    """Write the response; streamed bodies stop (and are closed) as soon as the client goes away."""
    headers = raw_headers(response, ray_id)
    body = response._body
    if body is None or isinstance(body, bytes):
        body = body or b""
        if "content-length" not in response.headers:
            # HEAD: the length the GET body would have, not the empty body actually sent
            headers.append((b"content-length", str(len(body)).encode()))
        body = b"" if head_only else body
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if head_only:
        await send({"type": "http.response.body", "body": b""})
        return
    if body_in is not None and not body_in.complete:
        # The Worker may still be reading the request body (an echo): a second reader of
        # `receive` would steal its chunks, so this stream can't watch for the disconnect.
        await _stream(send, response._iter_bytes())
        return
    await _stream_until_disconnect(send, receive, response._iter_bytes())


async def _stream_until_disconnect(send: Send, receive: Receive, chunks: AsyncIterator[bytes]) -> None:
    streaming = asyncio.ensure_future(_stream(send, chunks))
    watching = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait((streaming, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not streaming.done():
            streaming.cancel()  # client gone: closing the generator frees what it holds upstream
        await asyncio.gather(streaming, watching, return_exceptions=True)
    if streaming.done() and not streaming.cancelled() and streaming.exception() is not None:
        raise streaming.exception()


async def _stream(send: Send, chunks: AsyncIterator[bytes]) -> None:
    try:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_plain(send: Send, status: int, body: bytes, content_type: str,
                     extra: list[tuple[bytes, bytes]] = ()) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_websocket_denial(send: Send, scope: dict[str, Any], status: int, body: bytes, content_type: str,
                                ray_id: str) -> None:
    """Refuse a WebSocket handshake with a real HTTP response where the server supports it."""
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(b"content-type", content_type.encode()), (b"cf-ray", ray_id.encode())]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1011, "reason": body[:120].decode(errors="replace")})
