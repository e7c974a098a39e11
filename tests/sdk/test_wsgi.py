"""``workers.wsgi``: a PEP 3333 app served as a Worker from a thread, with ``environ["workers.env"]``."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pyodide.ffi import run_sync
from workers import Context, JsDict, Request, WorkerEntrypoint, wsgi

ENV = JsDict(MESSAGE="My env var")
StartResponse = Callable[..., Any]


def inspect_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    seen = {
        key: environ.get(key)
        for key in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT", "CONTENT_TYPE",
                    "HTTP_ACCEPT", "HTTP_X_CUSTOM", "wsgi.url_scheme")
    }
    seen["body"] = body.decode()
    seen["message"] = environ["workers.env"].MESSAGE
    seen["in_thread"] = threading.current_thread() is not threading.main_thread()
    start_response("201 Created", [("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    return [json.dumps(seen).encode()]


def streaming_app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b""
    yield b"one "
    yield b"two"


def no_content_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("204 No Content", [])
    return []


async def test_status_headers_body_and_env() -> None:
    request = Request(
        "https://example.com:8443/a%20b?x=1", method="POST", body=b"payload",
        headers=[("Content-Type", "text/plain"), ("Accept", "a"), ("Accept", "b"), ("X-Custom", "yes")],
    )
    response = await wsgi.fetch(inspect_app, request, ENV)
    assert (response.status, response.status_text) == (201, "Created")
    assert response.headers["content-type"] == "application/json"
    assert response.headers.getSetCookie() == ["a=1", "b=2"]
    assert await response.json() == {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/a b", "QUERY_STRING": "x=1", "SERVER_NAME": "example.com",
        "SERVER_PORT": "8443", "CONTENT_TYPE": "text/plain", "HTTP_ACCEPT": "a, b", "HTTP_X_CUSTOM": "yes",
        "wsgi.url_scheme": "https", "body": "payload", "message": "My env var", "in_thread": True,
    }


async def test_generator_body_streams() -> None:
    response = await wsgi.fetch(streaming_app, Request("https://example.com/"), ENV)
    assert [chunk async for chunk in response.body] == [b"one ", b"two"]


async def test_null_body_status() -> None:
    response = await wsgi.fetch(no_content_app, Request("https://example.com/"), ENV)
    assert response.status == 204
    assert response.body is None


async def test_app_exception_propagates() -> None:
    def broken(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        raise ValueError("broken wsgi app")

    with pytest.raises(ValueError, match="broken wsgi app"):
        await wsgi.fetch(broken, Request("https://example.com/"), ENV)


async def test_run_sync_reaches_the_request_loop_from_the_app_thread() -> None:
    loop = asyncio.get_running_loop()

    async def on_request_loop() -> bool:
        return asyncio.get_running_loop() is loop

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [str(run_sync(on_request_loop())).encode()]

    response = await wsgi.fetch(app, Request("https://example.com/"), ENV)
    assert await response.text() == "True"


async def test_entrypoint() -> None:
    default = wsgi.entrypoint(inspect_app)
    assert default.__name__ == "Default" and issubclass(default, WorkerEntrypoint)
    response = await default(Context(), ENV).fetch(Request("https://example.com/"))
    assert (await response.json())["message"] == "My env var"
