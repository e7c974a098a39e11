"""What one HTTP request holds (admission slots, generations), released when its answer is over.

``RequestScope`` wraps the app: every request gets an ``AsyncExitStack`` that routes register
what they hold on (``resources(request)``), and the stack is closed once the app is done with
the request: the answer sent whole, the client gone, or an exception on any path. A stream
outlives its route function, so a ``with`` block in the route could not hold its slot; the
request's stack can.

An unexpected exception before the answer began becomes a 500 with the service's error body and
no internal text, and the keep-alive connection stays usable (Starlette's last-resort handler
would re-raise it and make the server drop the connection).
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import EngineFailedError, is_openai

log = logging.getLogger("edgewise.backend")
_RESOURCES = "edgewise.resources"


def resources(connection: HTTPConnection) -> AsyncExitStack:
    """The exit stack of the request being answered; what is entered on it is released with the request."""
    return connection.scope[_RESOURCES]


class RequestScope:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] in ("http.response.start", "websocket.accept", "websocket.close")
            await send(message)

        async with AsyncExitStack() as stack:
            scope[_RESOURCES] = stack
            try:
                await self.app(scope, receive, tracked)
            except Exception:
                log.exception("unexpected error on %s", scope["path"])
                if started or scope["type"] != "http":
                    raise
                await _internal_error(scope, receive, send)


async def _internal_error(scope: Scope, receive: Receive, send: Send) -> None:
    error = EngineFailedError("AiError: internal error: the failure is in the backend's log")
    body = error.openai_body() if is_openai(scope["path"]) else error.envelope()
    await JSONResponse(body, status_code=error.status)(scope, receive, send)
