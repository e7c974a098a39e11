"""The dev edge's servers: clients too slow to send their headers or body get 408 and a closed connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from edge_runtime.devserver import _Server, _uvicorn_config, bind
from edge_runtime.edge import Edge
from gpu_backend.server.read_timeouts import ReadTimeouts
from slow_clients import dribble, request_head, running

ECHO = """
    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response(await request.text())
"""


@pytest.fixture
async def edge_port(make_edge: Callable[..., Edge]) -> AsyncIterator[int]:
    """The front door of an echoing Worker, on the dev server's config with 0.5 s read timeouts."""
    edge = make_edge(ECHO)
    server = _Server(_uvicorn_config(edge.front_door, ReadTimeouts(header_s=0.5, body_s=0.5)))
    async with running(server, bind("127.0.0.1", 0, "test")) as port:
        yield port


async def test_headers_sent_a_byte_at_a_time_are_cut_off(edge_port: int) -> None:
    answer = await dribble(edge_port, b"", request_head("GET", "/", "x-padding: " + "a" * 100))
    assert answer.status == 408 and answer.closed_after_s < 5


async def test_a_body_sent_a_byte_at_a_time_gets_408_and_the_connection_closes(edge_port: int) -> None:
    answer = await dribble(edge_port, request_head("POST", "/", length=100), b"x" * 100)
    assert answer.status == 408 and b"connection: close" in answer.data.lower()
    assert answer.closed_after_s < 5


async def test_ordinary_clients_are_served(edge_port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge_port}", timeout=10) as client:
        first = await client.post("/", content=b"hello")
        await asyncio.sleep(0.75)  # idle past the header timeout, on a kept-alive connection
        second = await client.post("/", content=b"again")
    assert (first.status_code, first.text, second.text) == (200, "hello", "again")
