"""Read timeouts over raw sockets, on both of uvicorn's HTTP protocols: slow headers and slow bodies are cut
off; idle keep-alive connections, bodies sent in time, long streams and WebSockets are not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gpu_backend.server.read_timeouts import BodyDeadline, ReadTimeouts, uvicorn_config, with_header_deadline
from gpu_backend.server.serve import listen
from slow_clients import dribble, request_head, running

TIMEOUT_S = 0.5
STREAM_CHUNKS, STREAM_GAP_S = 5, 0.3  # a stream of 1.5 s, three times the timeouts


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """POST /echo answers the body it read; GET /stream sends chunks for 1.5 s; a WebSocket echoes."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(STREAM_CHUNKS):
            await asyncio.sleep(STREAM_GAP_S)
            await send({"type": "http.response.body", "body": b"chunk %d\n" % index, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return  # the deadline answered for us
        body, more = body + message.get("body", b""), message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test's loop owns the signals
        yield


@pytest.fixture(params=[H11Protocol, HttpToolsProtocol], ids=["h11", "httptools"])
async def port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    """The test app on 127.0.0.1 with 0.5 s read timeouts, over each of uvicorn's HTTP protocols."""
    config = uvicorn.Config(BodyDeadline(app, TIMEOUT_S), http=with_header_deadline(request.param, TIMEOUT_S),
                            log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=1)
    async with running(_Server(config), listen("127.0.0.1", 0)) as bound:
        yield bound


async def test_headers_sent_a_byte_at_a_time_are_cut_off_with_408(port: int) -> None:
    answer = await dribble(port, b"", request_head("GET", "/echo", "x-padding: " + "a" * 200))
    assert answer.status == 408 and b"request headers" in answer.data
    assert answer.closed_after_s < TIMEOUT_S + 3


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(port: int) -> None:
    answer = await dribble(port, b"")
    assert answer.data == b"" and answer.closed_after_s < TIMEOUT_S + 3


async def test_a_body_sent_a_byte_at_a_time_gets_408_and_a_closed_connection(port: int) -> None:
    answer = await dribble(port, request_head("POST", "/echo", length=100), b"x" * 100)
    assert answer.status == 408 and b"connection: close" in answer.data.lower()
    assert b"request body" in answer.data
    assert answer.closed_after_s < TIMEOUT_S + 3


async def test_a_body_sent_in_pieces_within_the_time_is_served(port: int) -> None:
    answer = await dribble(port, request_head("POST", "/echo", "connection: close", length=4), b"abcd", gap_s=0.1)
    assert answer.status == 200 and answer.data.endswith(b"abcd")


async def test_a_kept_alive_connection_may_idle_past_the_header_timeout(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        first = await client.post("/echo", content=b"one")
        await asyncio.sleep(TIMEOUT_S * 1.5)  # idle, under uvicorn's 5 s keep-alive
        second = await client.post("/echo", content=b"two")
    assert (first.status_code, first.text, second.status_code, second.text) == (200, "one", 200, "two")
    assert first.extensions["network_stream"] is second.extensions["network_stream"]  # one connection


async def test_a_stream_longer_than_the_timeouts_arrives_whole(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        reply = await client.get("/stream")
    assert reply.status_code == 200
    assert reply.text.splitlines() == [f"chunk {index}" for index in range(STREAM_CHUNKS)]


async def test_a_websocket_may_stay_quiet_past_the_timeouts(port: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        await asyncio.sleep(TIMEOUT_S * 2)
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), 5) == "still here"


async def test_uvicorn_config_guards_the_protocol_uvicorn_picks_and_the_app() -> None:
    config = uvicorn_config(app, ReadTimeouts(header_s=2, body_s=3), log_level="warning")
    config.load()
    assert issubclass(config.http_protocol_class, AutoHTTPProtocol)
    assert config.http_protocol_class.header_timeout_s == 2
    assert isinstance(config.app, BodyDeadline) and config.app.timeout_s == 3


@pytest.mark.parametrize("values", [{"header_s": 0}, {"body_s": -1}])
def test_timeouts_must_be_positive(values: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        ReadTimeouts(**values)
