"""A Worker blocked in a synchronous HTTP client (urllib.request, httpx.Client, http.client) does not
stall other requests: the blocking socket calls wait on a thread while the event loop serves on."""

from __future__ import annotations

import asyncio
import contextvars
import http.server
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from config_projects import BASE_TOML, make_project
from edge_runtime import blocking_io
from edge_runtime.config import load_config
from edge_runtime.edge import Edge

SLEEP_S = 2.0
# A bound, not a measurement (benchmarks/blocking_clients.py measures): far under the 2 s the
# trivial request waited for when the blocking call held the loop, with room for a loaded machine.
FAST_BOUND_S = 0.5

WORKER = """\
import http.client
import urllib.parse
import urllib.request

import httpx
from workers import Response, WorkerEntrypoint


def blocking_get(kind, url):
    if kind == "urllib":
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.read().decode()
    if kind == "httpx":
        with httpx.Client(timeout=30) as client:
            return client.get(url).text
    if kind == "http.client":
        parts = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            connection.request("GET", parts.path)
            return connection.getresponse().read().decode()
        finally:
            connection.close()
    raise ValueError(kind)


SHARED = httpx.Client(timeout=30)  # one client, its pool used by concurrent requests


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urllib.parse.urlsplit(request.url).path
        if path == "/fast":
            return Response("fast")
        if path == "/slow/shared-httpx":
            return Response("upstream said: " + SHARED.get(self.env.SLOW_URL + "sleep").text)
        kind = path.removeprefix("/slow/")
        return Response("upstream said: " + blocking_get(kind, self.env.SLOW_URL + "sleep"))
"""

SYNC_HANDLER_WORKER = """\
import urllib.request
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    def fetch(self, request):  # not async: the call itself runs inside the invocation
        if request.url.endswith("/fast"):
            return Response("fast")
        with urllib.request.urlopen(self.env.SLOW_URL + "sleep", timeout=30) as reply:
            return Response("upstream said: " + reply.read().decode())
"""


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client cancelled mid-sleep (the wall-time test) leaves a broken pipe behind


class SlowServer:
    """An HTTP server on its own threads: ``/sleep`` answers after ``SLEEP_S``; ``started`` is set on arrival."""

    def __init__(self) -> None:
        outer = self
        self.started = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.started.set()
                time.sleep(SLEEP_S)
                body = b"slept"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    server = SlowServer()
    try:
        yield server
    finally:
        server.close()


async def _edge_client(tmp_path: Path, worker: str, slow_url: str, limits: str = "") -> AsyncIterator[httpx.AsyncClient]:
    toml = BASE_TOML + f'[vars]\nSLOW_URL = "{slow_url}"\n' + limits
    edge = Edge(load_config(make_project(tmp_path, {"wrangler.toml": toml, "src/entry.py": worker})))
    try:
        transport = httpx.ASGITransport(app=edge.front_door)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge", timeout=30) as client:
            yield client
    finally:
        await edge.aclose()


async def _fast_while_slow(client: httpx.AsyncClient, server: SlowServer, slow_path: str) -> tuple[float, httpx.Response]:
    """Send ``slow_path``; once its upstream call is in flight, time a ``/fast``; the slow reply too."""
    slow = asyncio.create_task(client.get(slow_path))
    sent = time.perf_counter()
    while not server.started.is_set():
        assert time.perf_counter() - sent < 10, "the Worker never called the slow server"
        await asyncio.sleep(0.005)
    started = time.perf_counter()
    fast = await client.get("/fast")
    fast_s = time.perf_counter() - started
    assert fast.status_code == 200 and fast.text == "fast"
    assert not slow.done(), "the slow request finished before /fast was answered: nothing was measured"
    return fast_s, await slow


@pytest.mark.parametrize("kind", ["urllib", "httpx", "http.client", "shared-httpx"])
async def test_a_request_is_answered_while_another_waits_in_a_blocking_client(
        tmp_path: Path, slow_server: SlowServer, kind: str) -> None:
    async for client in _edge_client(tmp_path, WORKER, slow_server.url):
        started = time.perf_counter()
        fast_s, slow = await _fast_while_slow(client, slow_server, f"/slow/{kind}")
        assert fast_s < FAST_BOUND_S, f"/fast waited {fast_s:.3f} s behind a blocking {kind} call"
        assert slow.status_code == 200 and slow.text == "upstream said: slept"
        assert time.perf_counter() - started >= SLEEP_S  # the slow one really waited for its upstream


@pytest.mark.parametrize("kind", ["urllib", "shared-httpx"])
async def test_blocking_calls_of_concurrent_requests_overlap(tmp_path: Path, slow_server: SlowServer,
                                                             kind: str) -> None:
    async for client in _edge_client(tmp_path, WORKER, slow_server.url):
        started = time.perf_counter()
        replies = await asyncio.gather(*(client.get(f"/slow/{kind}") for _ in range(4)))
        assert [reply.text for reply in replies] == ["upstream said: slept"] * 4
        assert time.perf_counter() - started < 2 * SLEEP_S  # side by side, not one after another


async def test_a_plain_def_fetch_handler_does_not_block_either(tmp_path: Path, slow_server: SlowServer) -> None:
    async for client in _edge_client(tmp_path, SYNC_HANDLER_WORKER, slow_server.url):
        fast_s, slow = await _fast_while_slow(client, slow_server, "/slow")
        assert fast_s < FAST_BOUND_S, f"/fast waited {fast_s:.3f} s behind a blocking call"
        assert slow.text == "upstream said: slept"


async def test_the_wall_time_limit_stops_an_invocation_stuck_in_a_blocking_client(
        tmp_path: Path, slow_server: SlowServer) -> None:
    limits = "[edgewise.limits]\nwall_time_s = 0.5\n"
    async for client in _edge_client(tmp_path, WORKER, slow_server.url, limits):
        started = time.perf_counter()
        reply = await client.get("/slow/urllib")
        assert reply.status_code == 503 and "wall_time_s" in reply.text
        assert time.perf_counter() - started < SLEEP_S - 0.5  # cancelled at the limit, not when the call returned


async def test_the_handler_sees_and_sets_the_invocations_context_variables() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    var.set("outside")

    async def handler(suffix: str) -> str:
        seen = var.get()
        await asyncio.sleep(0)
        var.set("inside")
        return seen + suffix

    assert await blocking_io.run_releasing_loop(handler, "!") == "outside!"
    assert var.get() == "inside"  # the invocation's context is the task's, as without the greenlet


async def test_errors_and_cancellation_reach_the_handler_and_the_caller(slow_server: SlowServer) -> None:
    async def failing() -> None:
        raise KeyError("from the handler")

    with pytest.raises(KeyError, match="from the handler"):
        await blocking_io.run_releasing_loop(failing)

    def blocking_call() -> str:
        import urllib.request
        with urllib.request.urlopen(slow_server.url + "sleep", timeout=30) as reply:
            return reply.read().decode()

    cleaned_up = []

    async def handler() -> str:
        try:
            return blocking_call()
        finally:
            cleaned_up.append(True)

    task = asyncio.ensure_future(blocking_io.run_releasing_loop(handler))
    await asyncio.to_thread(slow_server.started.wait, 10)
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - started < FAST_BOUND_S and cleaned_up == [True]
