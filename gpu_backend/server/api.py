"""The backend's Starlette app: Workers AI REST, OpenAI-compatible and WebSocket routes, health and metrics.

Every route but ``/healthz`` needs the service's bearer token. Errors are ``ServiceError``s,
answered in one place: OpenAI's error body on ``/v1`` routes, Cloudflare's envelope elsewhere.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import openai_api, openapi, responses_api, workers_ai
from .admission import Admission
from .batch_items import run_item
from .batches import BatchConfig, Batches
from .client import EngineClient
from .errors import BadTokenError, MethodNotAllowedError, MissingTokenError, NoRouteError, ServiceError, is_openai
from .generation import ClientGone
from .limits import DEFAULT_LIMITS, InputLimits
from .metrics import CONTENT_TYPE, Metrics
from .request_scope import RequestScope
from .websocket import run_model_websocket

DEFAULT_MAX_QUEUE = 256
PUBLIC_PATHS = frozenset({"/healthz"})
MODEL_HEADER = b"x-edgewise-model"  # the served model that answered, which may stand in for the name asked
UNCOUNTED_PATHS = frozenset({"/healthz", "/metrics"})
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; never reaches anyone


@dataclass
class Service:
    """What every route shares."""

    client: EngineClient
    admission: Admission
    metrics: Metrics
    started_at: float = field(default_factory=time.time)
    limits: InputLimits = DEFAULT_LIMITS  # what one request may ask for (sizes, counts, nesting)
    batches: Batches | None = None  # async batches (queueRequest); None: refused


def create_app(client: EngineClient, token: str, max_queue: int = DEFAULT_MAX_QUEUE,
               limits: InputLimits = DEFAULT_LIMITS, batches: BatchConfig | None = None) -> ASGIApp:
    """``batches``: where async batches are kept (their folder is opened here); None refuses them."""
    if not token:
        raise ValueError("the backend needs a non-empty token")
    admission = Admission(max_queue, lambda model: client.model_info(model).max_num_seqs)
    service = Service(client, admission, Metrics(client, admission), limits=limits)
    if batches is not None:
        service.batches = Batches(batches, service, run_item)
    app = Starlette(routes=_routes(), middleware=[Middleware(RequestScope)], lifespan=_lifespan,
                    exception_handlers={ServiceError: _service_error, ClientGone: _client_gone,
                                        ClientDisconnect: _client_gone,  # left mid-body, or too slow to send it
                                        HTTPException: _no_route})
    app.state.service = service
    app.state.openapi = openapi.service_document(client, limits)
    return _Authenticated(app, token)


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """Runs the batches' task while the server serves; at shutdown its unfinished items stay queued on disk."""
    batches = app.state.service.batches
    if batches is not None:
        await batches.start()
    try:
        yield
    finally:
        if batches is not None:
            await batches.stop()


def _routes() -> list[BaseRoute]:
    openai = [
        Route("/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/completions", openai_api.completions, methods=["POST"]),
        Route("/responses", responses_api.create_response, methods=["POST"]),
        Route("/embeddings", openai_api.embeddings, methods=["POST"]),
        Route("/models", openai_api.list_models, methods=["GET"]),
    ]
    account = [
        Route("/ai/run/{model:path}", workers_ai.run_model, methods=["POST"]),
        WebSocketRoute("/ai/run/{model:path}", run_model_websocket),
        Route("/ai/models/search", workers_ai.search_models, methods=["GET"]),
        Mount("/ai/v1", routes=openai),
    ]
    return [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/openapi.json", _openapi, methods=["GET"]),  # needs the token, as every route but /healthz
        Mount("/v1", routes=openai),
        Mount("/client/v4/accounts/{account_id}", routes=account),
    ]


async def _healthz(request: Request) -> Response:
    """200 while every engine serves (naming the lost instances of those serving with fewer); 503
    naming the engines that stopped, so a supervisor can act: "unhealthy" while they restart,
    "failed" once one has used up its restarts and only restarting the backend brings it back."""
    service: Service = request.app.state.service
    failures = service.client.failures()
    if failures:
        for_good = service.client.failed_for_good()
        return JSONResponse({"status": "failed" if for_good else "unhealthy", "models": service.client.model_names(),
                             "failed": failures, "failed_for_good": for_good}, status_code=503)
    degraded = {model: {str(instance): why for instance, why in lost.items()}
                for model, lost in service.client.degraded().items()}
    if degraded:
        return JSONResponse({"status": "degraded", "models": service.client.model_names(), "lost_instances": degraded})
    return JSONResponse({"status": "ok", "models": service.client.model_names()})


async def _metrics(request: Request) -> Response:
    return Response(request.app.state.service.metrics.render(), media_type=CONTENT_TYPE)


async def _openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


async def _service_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ServiceError)
    openai = is_openai(request.url.path)
    status = (error.openai_status or error.status) if openai else error.status
    body = error.openai_body() if openai else error.envelope()
    if error.status == 429:
        metrics = request.app.state.service.metrics
        metrics.rejected.labels(metrics.model_label(getattr(request.state, "model", None))).inc()
    # 429 asks the official SDKs (which retry twice by default) to honour Retry-After, not to hammer
    headers = {**error.headers(), "x-should-retry": "true" if error.status == 429 else "false"}
    return JSONResponse(body, status_code=status, headers=headers)


async def _no_route(request: Request, error: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (a route, another method), in the service's error bodies."""
    assert isinstance(error, HTTPException)
    path = request.url.path
    if error.status_code == 405:
        allowed = (error.headers or {}).get("allow", "")
        return await _service_error(request, MethodNotAllowedError(request.method, path, allowed))
    return await _service_error(request, NoRouteError(path))


async def _client_gone(request: Request, error: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


class _Authenticated:
    """Checks ``Authorization: Bearer <token>`` on every HTTP and WebSocket request but the public paths,
    counts every HTTP answer by route, model and status, and names the model that answered in
    ``x-edgewise-model`` (a route that resolved one sets ``request.state.model``)."""

    def __init__(self, app: Starlette, token: str) -> None:
        self.app = app
        self.state = app.state
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in PUBLIC_PATHS:
            error = self._check(HTTPConnection(scope))
            if error is not None:
                await self._refuse(scope, receive, send, error)
                return
        if scope["type"] != "http" or scope["path"] in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        status = [CLIENT_CLOSED_REQUEST]

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                model = scope.get("state", {}).get("model")
                if model is not None:
                    message = {**message, "headers": [*message.get("headers", []), (MODEL_HEADER, model.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = "openai" if is_openai(scope["path"]) else "workers-ai"
            metrics = self.state.service.metrics
            metrics.requests.labels(route, metrics.model_label(scope.get("state", {}).get("model")), str(status[0])).inc()

    def _check(self, connection: HTTPConnection) -> ServiceError | None:
        scheme, _, given = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return MissingTokenError()
        return None if hmac.compare_digest(given.strip().encode(), self._token) else BadTokenError()

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
            return
        openai = is_openai(scope["path"])
        body = error.openai_body() if openai else error.envelope()
        await JSONResponse(body, status_code=error.status)(scope, receive, send)

