"""The anycast front door: locates the client, picks the nearest healthy PoP, adds the network delay.

It also serves the local control API under ``/cdn-cgi/edgewise/`` (PoP list and health, tail stream),
to same-origin and non-browser clients only; changes need the run's control token (``control_access``).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from . import http_io
from .bindings.durable_objects.directory import describe_objects
from .control_access import cross_origin_refusal, has_token, missing_token_message
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
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = cross_origin_refusal(headers)
        if scope["type"] == "websocket":
            if route == ["tail"] and refusal is None:
                await self._tail(receive, send)
            else:
                await _refuse_websocket(receive, send, scope, refusal or f"no control WebSocket {scope['path']}")
            return
        method = scope["method"]
        if refusal is not None:
            await _json(send, 403, {"error": refusal})
        elif route == ["pops"] and method == "GET":
            await _json(send, 200, [self.edge.describe(pop) for pop in self.edge.pops])
        elif route == ["objects"] and method == "GET":
            await _json(send, 200, describe_objects(self.edge))
        elif len(route) == 3 and route[0] == "pops" and route[2] in ("up", "down") and method == "POST":
            if has_token(headers, self.edge.control_token):
                await self._set_health(send, route[1].upper(), route[2] == "up")
            else:
                await _json(send, 401, {"error": missing_token_message()})
        elif route == ["health"]:
            await _json(send, 200, {"ok": True, "healthyPops": sum(pop.healthy for pop in self.edge.pops)})
        else:
            await _json(send, 404, {"error": f"no control endpoint {method} {scope['path']}",
                                    "endpoints": ["GET pops", "GET objects", "POST pops/<COLO>/up|down", "GET health", "WS tail"]})

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


async def _refuse_websocket(receive: Any, send: Any, scope: dict[str, Any], reason: str) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    body = json.dumps({"error": reason}).encode()
    await http_io.send_websocket_denial(send, scope, 403, body, "application/json", "")


async def _json(send: Any, status: int, payload: Any) -> None:
    await http_io.send_plain(send, status, json.dumps(payload).encode(), "application/json")


async def _refuse(send: Any, scope: dict[str, Any], status: int, error: Any) -> None:
    accept = next((value for name, value in scope.get("headers", ()) if name == b"accept"), b"")
    body, content_type = render(error, None, b"text/html" in accept)
    if scope["type"] == "websocket":
        await http_io.send_websocket_denial(send, scope, status, body, content_type, "")
        return
    await http_io.send_plain(send, status, body, content_type)
