"""The anycast front door: locates the client, picks the nearest healthy PoP, adds the network delay.

It also serves the local control API under ``/cdn-cgi/edgewise/`` (PoP list and health, tail stream).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from . import http_io
from .errors import bad_request, no_healthy_pop, render
from .geo import ClientLocation, LocationError
from .pop import CLIENT_SCOPE_KEY
from .routing import simulated_rtt_ms

if TYPE_CHECKING:
    from .edge import Edge

CONTROL_PREFIX = "/cdn-cgi/edgewise/"
_LOCATION_HEADERS = frozenset({b"edgewise-client-location", b"mf-cf-blob", b"cf-ipcountry"})


class FrontDoor:
    """ASGI app on the public port (8787 by default)."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            return
        if scope["path"].startswith(CONTROL_PREFIX):
            await self._control(scope, receive, send)
            return
        try:
            client = self._locate(scope)
        except LocationError as error:
            await _refuse(send, scope, 400, bad_request(str(error)))
            return
        pop = self.edge.router.pick(client)
        if pop is None:
            await _refuse(send, scope, 503, no_healthy_pop("Every configured PoP is marked down."))
            return
        latency = self.edge.config.edgewise.latency
        if latency.enabled:
            await asyncio.sleep(simulated_rtt_ms(pop.location, client, latency) / 1000.0)
        scope[CLIENT_SCOPE_KEY] = client
        await pop(scope, receive, send)

    def _locate(self, scope: dict[str, Any]) -> ClientLocation:
        headers = {}
        for name, value in scope["headers"]:
            if name in _LOCATION_HEADERS:
                headers[name.decode()] = value.decode("latin-1")
        locator = self.edge.locator
        if not headers and not locator.has_ip_table:
            return locator.default  # the common case in development: nothing says where the client is
        peer = scope.get("client")
        return locator.locate(headers, peer[0] if peer else None)

    async def _control(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = scope["path"][len(CONTROL_PREFIX):].strip("/").split("/")
        if scope["type"] == "websocket":
            if route == ["tail"]:
                await self._tail(receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        method = scope["method"]
        if route == ["pops"] and method == "GET":
            await _json(send, 200, [self.edge.describe(pop) for pop in self.edge.pops])
        elif len(route) == 3 and route[0] == "pops" and route[2] in ("up", "down") and method == "POST":
            await self._set_health(send, route[1].upper(), route[2] == "up")
        elif route == ["health"]:
            await _json(send, 200, {"ok": True, "healthyPops": sum(pop.healthy for pop in self.edge.pops)})
        else:
            await _json(send, 404, {"error": f"no control endpoint {method} {scope['path']}",
                                    "endpoints": ["GET pops", "POST pops/<COLO>/up|down", "GET health", "WS tail"]})

    async def _set_health(self, send: Any, colo: str, healthy: bool) -> None:
        pop = next((pop for pop in self.edge.pops if pop.colo == colo), None)
        if pop is None:
            await _json(send, 404, {"error": f"no PoP {colo} in this run", "pops": [p.colo for p in self.edge.pops]})
            return
        pop.healthy = healthy
        await _json(send, 200, self.edge.describe(pop))

    async def _tail(self, receive: Any, send: Any) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        # Subscribe before accepting: a client that sees the handshake must not miss the next event.
        with self.edge.hub.subscribe() as events:
            await send({"type": "websocket.accept"})
            forward = asyncio.ensure_future(_forward_events(events, send))
            try:
                while (await receive())["type"] != "websocket.disconnect":
                    pass
            finally:
                forward.cancel()
                await asyncio.gather(forward, return_exceptions=True)


async def _forward_events(events: asyncio.Queue, send: Any) -> None:
    while True:
        await send({"type": "websocket.send", "text": json.dumps(await events.get())})


async def _json(send: Any, status: int, payload: Any) -> None:
    await http_io.send_plain(send, status, json.dumps(payload).encode(), "application/json")


async def _refuse(send: Any, scope: dict[str, Any], status: int, error: Any) -> None:
    accept = next((value for name, value in scope.get("headers", ()) if name == b"accept"), b"")
    body, content_type = render(error, None, b"text/html" in accept)
    if scope["type"] == "websocket":
        await http_io.send_websocket_denial(send, scope, status, body, content_type, "")
        return
    await http_io.send_plain(send, status, body, content_type)
