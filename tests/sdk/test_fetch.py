"""``workers.fetch`` against a real Starlette app on uvicorn: options, redirects, errors, limits, decoding."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPMethod

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route

from workers import Request, Response, _state, fetch
from workers._state import SubrequestBudget, SubrequestLimitError

GZIP_TEXT = "decoded for you " * 64


async def _echo(request: StarletteRequest) -> JSONResponse:
    body = await request.body()
    return JSONResponse({
        "method": request.method,
        "path": request.url.path,
        "body": body.decode(),
        "headers": {name: value for name, value in request.headers.items()},
    })


async def _gzip(request: StarletteRequest) -> StarletteResponse:
    return StarletteResponse(
        gzip.compress(GZIP_TEXT.encode()), media_type="text/plain", headers={"content-encoding": "gzip"}
    )


async def _cookies(request: StarletteRequest) -> StarletteResponse:
    response = PlainTextResponse("cookies")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


async def _status(request: StarletteRequest) -> PlainTextResponse:
    return PlainTextResponse("status body", status_code=int(request.path_params["code"]))


APP = Starlette(routes=[
    Route("/echo", _echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    Route("/redirect", lambda request: RedirectResponse("/echo", status_code=302)),
    Route("/redirect-loop", lambda request: RedirectResponse("/redirect-loop", status_code=302)),
    Route("/gzip", _gzip),
    Route("/cookies", _cookies),
    Route("/status/{code:int}", _status),
])


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(APP, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
    assert not thread.is_alive()


def _refused_url() -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # bound, never listened: nothing accepts on this port now
    return f"http://127.0.0.1:{port}/"


async def test_options_dict_is_a_type_error(base_url: str) -> None:
    with pytest.raises(TypeError, match="positional argument"):
        await fetch(f"{base_url}/echo", {"headers": {}})  # type: ignore[misc]


async def test_post_reaches_server_with_method_body_and_headers(base_url: str) -> None:
    response = await fetch(f"{base_url}/echo", method="POST", body="x", headers={"X-Custom": "yes"})
    assert response.status == 200
    assert response.ok is True
    assert response.headers.get("Content-Type") == "application/json"
    assert response.redirected is False
    assert response.url == f"{base_url}/echo"
    data = await response.json()
    assert data.method == "POST"
    assert data.body == "x"
    assert data.headers["x-custom"] == "yes"
    assert data.headers["content-type"] == "text/plain;charset=UTF-8"


async def test_text_of_a_get(base_url: str) -> None:
    response = await fetch(f"{base_url}/echo", method=HTTPMethod.GET)
    text = await response.text()
    assert text.startswith('{"method":"GET","path":"/echo"')
    with pytest.raises(OSError):
        await response.text()


async def test_fetch_a_request_object(base_url: str) -> None:
    request = Request(f"{base_url}/echo", method="PUT", body=b"raw", headers={"X-From": "request"})
    data = await (await fetch(request)).json()
    assert (data.method, data.body, data.headers["x-from"]) == ("PUT", "raw", "request")
    assert request.body_used


async def test_error_status_is_returned_not_raised(base_url: str) -> None:
    response = await fetch(f"{base_url}/status/503")
    assert (response.status, response.ok) == (503, False)
    assert await response.text() == "status body"
    with pytest.raises(OSError, match="503 Server Error"):
        response.raise_for_status()


async def test_manual_redirect_returns_the_3xx(base_url: str) -> None:
    response = await fetch(f"{base_url}/redirect", redirect="manual")
    assert response.status == 302
    assert response.headers.get("location") == "/echo"
    assert response.redirected is False


async def test_redirects_are_followed_by_default(base_url: str) -> None:
    response = await fetch(f"{base_url}/redirect")
    assert response.status == 200
    assert response.redirected is True
    assert response.url == f"{base_url}/echo"
    assert (await response.json()).path == "/echo"


async def test_error_redirect_mode_raises(base_url: str) -> None:
    with pytest.raises(OSError, match="redirect"):
        await fetch(f"{base_url}/redirect", redirect="error")


async def test_redirect_loop_raises_os_error(base_url: str) -> None:
    with pytest.raises(OSError):
        await fetch(f"{base_url}/redirect-loop")


async def test_invalid_redirect_mode_is_type_error(base_url: str) -> None:
    with pytest.raises(TypeError, match="follow"):
        await fetch(f"{base_url}/echo", redirect="sometimes")


async def test_refused_connection_raises_os_error() -> None:
    with pytest.raises(OSError, match="failed"):
        await fetch(_refused_url())


async def test_subrequest_budget(base_url: str) -> None:
    budget = SubrequestBudget(limit=2)
    token = _state.current.set(_state.Invocation(subrequests=budget))
    try:
        for _ in range(2):
            assert (await fetch(f"{base_url}/status/204")).status == 204
        with pytest.raises(SubrequestLimitError, match="limit 2") as error:
            await fetch(f"{base_url}/status/204")
    finally:
        _state.current.reset(token)
    assert isinstance(error.value, RuntimeError)
    assert budget.used == 2


async def test_fetcher_bypasses_the_network() -> None:
    seen: list[Request] = []

    async def fetcher(request: Request) -> Response:
        seen.append(request)
        return Response("from binding", status=201)

    response = await fetch("https://service.internal/path", method="POST", body="b", fetcher=fetcher)
    assert (response.status, await response.text()) == (201, "from binding")
    assert seen[0].url == "https://service.internal/path"
    assert await seen[0].text() == "b"


async def test_gzip_body_is_decoded(base_url: str) -> None:
    response = await fetch(f"{base_url}/gzip")
    assert await response.text() == GZIP_TEXT
    assert response.headers.get("content-encoding") is None  # the body handed over is no longer encoded
    assert response.headers.get("content-length") is None


async def test_set_cookie_lines_stay_separate(base_url: str) -> None:
    response = await fetch(f"{base_url}/cookies")
    cookies = response.headers.get_all("set-cookie")
    assert [cookie.split(";")[0] for cookie in cookies] == ["a=1", "b=2"]
    proxied = Response(response.body, status=response.status, headers=response.headers)
    assert proxied.headers.get_all("set-cookie") == cookies
    assert await proxied.text() == "cookies"


async def test_streamed_body_chunks(base_url: str) -> None:
    response = await fetch(f"{base_url}/gzip")
    chunks = [chunk async for chunk in response.body]
    assert b"".join(chunks).decode() == GZIP_TEXT


async def test_unread_bodies_do_not_exhaust_the_connection_pool(base_url: str) -> None:
    # httpx pools 100 connections: each fetch whose body is never read must still give its one back.
    for _ in range(110):
        response = await asyncio.wait_for(fetch(f"{base_url}/status/200"), timeout=5)
        assert response.status == 200
