"""Connects a real WebSocket (ASGI) to the ``client`` end of the Worker's ``WebSocketPair``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from edgewise_sdk.workers import Context, Headers, WebSocket
from edgewise_sdk.workers.websocket import CloseEvent, MessageEvent

from .errors import EdgeError
from .geo import ClientLocation

if TYPE_CHECKING:
    from .pop import Pop


async def serve_websocket(pop: Pop, scope: dict[str, Any], receive: Any, send: Any, client: ClientLocation,
                          ray_id: str) -> None:
    """Run the Worker's fetch on the upgrade request; a 101 with ``web_socket`` completes the handshake."""
    if (await receive())["type"] != "websocket.connect":
        return
    headers = Headers.from_raw(scope["headers"])
    request = pop.build_request(scope, client, ray_id, None, headers)
    ctx = Context()
    try:
        response = await pop.invoke_fetch(request, ctx, ray_id, [])
        if response.status != 101 or not isinstance(response.web_socket, WebSocket):
            await pop.deny_websocket(send, scope, response, ray_id)
            return
        await send({"type": "websocket.accept", "headers": [(b"cf-ray", ray_id.encode())]})
        await _relay(response.web_socket, receive, send)
    except EdgeError as error:
        await pop._send_error(send, scope, error, ray_id)
    finally:
        pop.after_invocation(ctx, ray_id)


async def _relay(client: WebSocket, receive: Any, send: Any) -> None:
    outgoing = client.bridge()
    to_browser = asyncio.ensure_future(_pump_out(outgoing, send))
    from_browser = asyncio.ensure_future(_pump_in(client, receive))
    try:
        await asyncio.wait((to_browser, from_browser), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_browser, from_browser):
            task.cancel()
        await asyncio.gather(to_browser, from_browser, return_exceptions=True)


async def _pump_out(outgoing: asyncio.Queue, send: Any) -> None:
    """What the Worker's server end sends goes to the browser; its close ends the connection."""
    while True:
        event = await outgoing.get()
        if isinstance(event, MessageEvent):
            key = "text" if isinstance(event.data, str) else "bytes"
            await send({"type": "websocket.send", key: event.data})
        elif isinstance(event, CloseEvent):
            await send({"type": "websocket.close", "code": event.code, "reason": event.reason})
            return


async def _pump_in(client: WebSocket, receive: Any) -> None:
    """What the browser sends fires the server end's listeners; its close fires "close" there."""
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            data = message.get("text")
            client.send(data if data is not None else message.get("bytes", b""))
        elif message["type"] == "websocket.disconnect":
            client.close(message.get("code", 1005), message.get("reason") or "")
            return

