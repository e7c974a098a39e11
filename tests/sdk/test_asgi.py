"""``workers.asgi``: Starlette and FastAPI apps served as Workers, lifespan per request, streaming, websockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response as StarletteResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket

import asgi
from workers import Context, JsDict, Request, Response, WorkerEntrypoint
from workers.websocket import CloseEvent, MessageEvent

ENV = JsDict(MESSAGE="My env var")


class Item(BaseModel):
    message: str


def _fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(item: Item) -> dict[str, str]:
        return {"message": item.message}

    @app.get("/env")
    async def read_env(request: StarletteRequest) -> dict[str, str]:
        return {"message": request.scope["env"].MESSAGE}

    @app.get("/env-dependency")
    async def read_env_dependency(env: Any = asgi.env) -> dict[str, str]:
        return {"message": env.MESSAGE}

    return app


def _starlette_app(counts: dict[str, int]) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        counts["startup"] += 1
        yield {"greeting": "hi"}
        counts["shutdown"] += 1

    async def echo(request: StarletteRequest) -> JSONResponse:
        return JSONResponse(await request.json())

    async def inspect(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({
            "method": request.method, "path": request.url.path, "raw_path": request.scope["raw_path"].decode(),
            "query": dict(request.query_params), "header": request.headers.get("x-custom"),
            "body": (await request.body()).decode(), "greeting": request.state.greeting,
            "scheme": request.url.scheme, "server": list(request.scope["server"]),
        })

    async def stream(request: StarletteRequest) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"one ", b"two ", b"three"):
                await asyncio.sleep(0)
                yield part
        return StreamingResponse(chunks(), media_type="text/plain")

    async def no_content(request: StarletteRequest) -> StarletteResponse:
        return StarletteResponse(status_code=204)

    async def boom(request: StarletteRequest) -> PlainTextResponse:
        raise ValueError("boom")

    async def ws_echo(websocket: StarletteWebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(f"echo:{text}")

    async def ws_fail(websocket: StarletteWebSocket) -> None:
        await websocket.accept()
        raise RuntimeError("websocket handler failed")

    async def ws_refuse(websocket: StarletteWebSocket) -> None:
        await websocket.close()

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]), Route("/inspect/{rest:path}", inspect, methods=["GET", "POST"]),
            Route("/stream", stream), Route("/no-content", no_content), Route("/boom", boom),
            WebSocketRoute("/ws", ws_echo), WebSocketRoute("/ws-fail", ws_fail), WebSocketRoute("/ws-refuse", ws_refuse),
        ],
        lifespan=lifespan,
    )


@pytest.fixture
def counts() -> dict[str, int]:
    return {"startup": 0, "shutdown": 0}


@pytest.fixture
def app(counts: dict[str, int]) -> Starlette:
    return _starlette_app(counts)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _json_request(path: str, body: bytes = b'{"message":"x"}') -> Request:
    return Request(f"https://example.com{path}", method="POST", headers={"content-type": "application/json"}, body=body)


@pytest.mark.parametrize("make_app", [_fastapi_app, lambda: _starlette_app({"startup": 0, "shutdown": 0})], ids=["fastapi", "starlette"])
async def test_json_echo(make_app: Any) -> None:
    response = await asgi.fetch(make_app(), _json_request("/echo"), ENV)
    assert isinstance(response, Response)
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert await response.text() == '{"message":"x"}'


async def test_request_parts_reach_the_app(app: Starlette) -> None:
    request = Request(
        "https://example.com/inspect/a%20b?x=1&y=two", method="POST",
        headers={"X-Custom": "yes", "content-type": "text/plain"}, body=_chunks(b"chunk1-", b"chunk2-", b"chunk3"),
    )
    response = await asgi.fetch(app, request.js_object, ENV)
    assert await response.json() == {
        "method": "POST", "path": "/inspect/a b", "raw_path": "/inspect/a%20b", "query": {"x": "1", "y": "two"},
        "header": "yes", "body": "chunk1-chunk2-chunk3", "greeting": "hi", "scheme": "https",
        "server": ["example.com", 443],
    }


async def test_scope_has_the_spec_fields() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        seen.update(scope)
        seen["first"] = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1"), (b"x-a", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    request = Request("http://h:8080/p?q=1", headers={"Accept": "a", "cf-connecting-ip": "10.0.0.1"})
    response = await asgi.fetch(app, request, ENV)
    assert await response.text() == "ok"
    assert response.headers.get("x-a") == "1, 2"
    assert seen["asgi"] == {"spec_version": "2.0", "version": "3.0"}
    assert (seen["type"], seen["http_version"], seen["method"], seen["root_path"]) == ("http", "1.1", "GET", "")
    assert (seen["server"], seen["client"], seen["query_string"]) == (("h", 8080), ("10.0.0.1", 0), b"q=1")
    assert (b"accept", b"a") in seen["headers"]
    assert seen["env"] is ENV
    assert seen["first"] == {"type": "http.request", "body": b"", "more_body": False}


@pytest.mark.parametrize("path", ["/env", "/env-dependency"])
async def test_env_reaches_fastapi(path: str) -> None:
    response = await asgi.fetch(_fastapi_app(), Request(f"https://example.com{path}"), ENV)
    assert await response.json() == {"message": "My env var"}


async def test_lifespan_runs_per_request(app: Starlette, counts: dict[str, int]) -> None:
    for expected in (1, 2):
        response = await asgi.fetch(app, _json_request("/echo"), ENV)
        assert response.status == 200
        assert counts == {"startup": expected, "shutdown": expected}


async def test_app_without_lifespan_is_served() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"plain"})

    assert await (await asgi.fetch(app, Request("https://e.com/"), ENV)).text() == "plain"


async def test_lifespan_startup_failure_raises() -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise ConnectionError("database down")
        yield

    with pytest.raises(RuntimeError, match="database down"):
        await asgi.fetch(Starlette(lifespan=lifespan), Request("https://e.com/"), ENV)


async def test_streaming_response_chunks_arrive_in_order(app: Starlette, counts: dict[str, int]) -> None:
    ctx = Context()
    response = await asgi.fetch(app, Request("https://example.com/stream"), ENV, ctx)
    assert response.headers["content-type"].startswith("text/plain")
    assert [chunk async for chunk in response.body] == [b"one ", b"two ", b"three"]
    await ctx.drain(5)
    assert counts == {"startup": 1, "shutdown": 1}


async def test_abandoned_stream_stops_the_app() -> None:
    stopped = asyncio.Event()

    async def forever(request: StarletteRequest) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    await asyncio.sleep(0)
                    yield b"tick"
            finally:
                stopped.set()
        return StreamingResponse(chunks())

    ctx = Context()
    response = await asgi.fetch(Starlette(routes=[Route("/", forever)]), Request("https://e.com/"), ENV, ctx)
    body = aiter(response.body)
    assert await anext(body) == b"tick"
    await body.aclose()
    await asyncio.wait_for(stopped.wait(), 5)
    await ctx.drain(5)


async def test_null_body_status(app: Starlette) -> None:
    response = await asgi.fetch(app, Request("https://example.com/no-content"), ENV)
    assert response.status == 204
    assert response.body is None


async def test_app_exception_propagates() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raise ValueError("broken app")

    with pytest.raises(ValueError, match="broken app"):
        await asgi.fetch(app, Request("https://e.com/"), ENV)


async def test_starlette_error_is_a_logged_500(app: Starlette, counts: dict[str, int], caplog: pytest.LogCaptureFixture) -> None:
    # Starlette's error middleware sends its own 500 before re-raising, so the error is logged, not raised.
    with caplog.at_level(logging.ERROR, logger="edgewise.worker"):
        response = await asgi.fetch(app, Request("https://example.com/boom"), ENV)
    assert response.status == 500
    assert "boom" in caplog.text
    assert counts["shutdown"] == 1


async def test_no_response_is_an_error() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    with pytest.raises(RuntimeError, match="The application did not generate a response"):
        await asgi.fetch(app, Request("https://e.com/"), ENV)


async def test_entrypoint_serves_the_app() -> None:
    default = asgi.entrypoint(_fastapi_app())
    assert default.__name__ == "Default"
    assert issubclass(default, WorkerEntrypoint)
    response = await default(Context(), ENV).fetch(_json_request("/echo", b'{"message":"via entrypoint"}'))
    assert await response.json() == {"message": "via entrypoint"}


async def _next_event(queue: asyncio.Queue[Any]) -> Any:
    return await asyncio.wait_for(queue.get(), 5)


async def test_websocket_echoes_through_the_pair(app: Starlette) -> None:
    request = Request("https://example.com/ws", headers={"Upgrade": "websocket"})
    response = await asgi.entrypoint(app)(Context(), ENV).fetch(request)
    assert response.status == 101
    client = response.web_socket
    events = client.bridge()
    client.send("hi")
    assert await _next_event(events) == MessageEvent("echo:hi")
    client.send("again")
    assert await _next_event(events) == MessageEvent("echo:again")
    client.close(1000, "bye")


async def test_websocket_app_failure_closes_with_1011(app: Starlette, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="edgewise.worker"):
        response = await asgi.websocket(app, Request("https://example.com/ws-fail"), ENV)
        events = response.web_socket.bridge()
        event = await _next_event(events)
    assert isinstance(event, CloseEvent) and event.code == 1011
    assert "websocket handler failed" in caplog.text


async def test_websocket_refused_before_accept_is_403(app: Starlette) -> None:
    response = await asgi.websocket(app, Request("https://example.com/ws-refuse"), ENV)
    assert response.status == 403
    assert response.web_socket is None


def test_options_validate_encode_body() -> None:
    assert asgi.Options().encode_body == "automatic"
    assert asgi.Options(encode_body="manual").encode_body == "manual"
    with pytest.raises(ValueError, match="encode_body"):
        asgi.Options(encode_body="gzip")  # type: ignore[arg-type]


def test_bare_asgi_module_is_workers_asgi() -> None:
    import sys

    from workers import asgi as workers_asgi

    assert sys.modules["asgi"] is workers_asgi
    assert asgi.fetch is workers_asgi.fetch
