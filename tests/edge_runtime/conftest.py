"""Shared fixtures: a Worker project in tmp_path, an Edge built from it, and clients to its front door.

`make_edge(source, ...)` writes wrangler.toml and src/entry.py and returns the loaded Edge;
`open_client(edge)` talks to the front door in-process (ASGI); `serve(app)` runs the app on a
real 127.0.0.1 socket with uvicorn inside the test's event loop, for WebSockets, disconnects
and a real client IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from assets_fixtures import site_starter
from edge_runtime.bindings.kv import DATABASE_FILE, KvNamespace
from edge_runtime.bindings.kv_store import KvStore
from edge_runtime.bindings.r2 import R2Bucket
from edge_runtime.config import load_config
from edge_runtime.edge import Edge
from kv_fixtures import Clock
from r2_fixtures import Opener as BucketOpener
from r2_fixtures import bucket_opener
from vectorize_fixtures import Opener as IndexOpener
from vectorize_fixtures import docs_opener

CURRENT_DATE = "2025-11-02"
BASE_URL = "http://edge.test"
SERVER_START_S = 10.0
SERVER_STOP_S = 10.0


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # strings and lists of strings are valid TOML as JSON


def render_wrangler_toml(
    *,
    pops: Sequence[str],
    compatibility_date: str,
    compatibility_flags: Sequence[str],
    vars: Mapping[str, Any],
    latency: Mapping[str, Any] | None,
    limits: Mapping[str, Any],
    ip_locations: Mapping[str, str],
    edgewise: Mapping[str, Any],
) -> str:
    lines = [
        'name = "test-worker"',
        'main = "src/entry.py"',
        f"compatibility_date = {_toml_value(compatibility_date)}",
        f"compatibility_flags = {_toml_value(['python_workers', *compatibility_flags])}",
        "",
        "[vars]",
        *(f"{name} = {_toml_value(value)}" for name, value in vars.items()),
        "",
        "[edgewise]",
        f"pops = {_toml_value(list(pops))}",
        *(f"{key} = {_toml_value(value)}" for key, value in edgewise.items()),
    ]
    if latency is None:
        lines.append("latency = false")
    else:
        lines += ["", "[edgewise.latency]", *(f"{k} = {_toml_value(v)}" for k, v in latency.items())]
    if limits:
        lines += ["", "[edgewise.limits]", *(f"{k} = {_toml_value(v)}" for k, v in limits.items())]
    if ip_locations:
        table = (f"{json.dumps(cidr)} = {json.dumps(spec)}" for cidr, spec in ip_locations.items())
        lines += ["", "[edgewise.ip_locations]", *table]
    return "\n".join(lines) + "\n"


@pytest.fixture
def worker_project(tmp_path: Path) -> Callable[..., Path]:
    """Writes a Worker project; returns its root.

    `edgewise` adds plain keys to the [edgewise] table (e.g. client_location, cf); `files` adds
    more files (paths relative to the root).
    """

    def write(
        source: str,
        *,
        pops: Sequence[str] = ("DFW", "LHR"),
        compatibility_date: str = CURRENT_DATE,
        compatibility_flags: Sequence[str] = (),
        vars: Mapping[str, Any] | None = None,
        latency: Mapping[str, Any] | None = None,
        limits: Mapping[str, Any] | None = None,
        ip_locations: Mapping[str, str] | None = None,
        edgewise: Mapping[str, Any] | None = None,
        dev_vars: str | None = None,
        files: Mapping[str, str] | None = None,
    ) -> Path:
        root = tmp_path / "worker"
        (root / "src").mkdir(parents=True, exist_ok=True)
        (root / "wrangler.toml").write_text(render_wrangler_toml(
            pops=pops, compatibility_date=compatibility_date, compatibility_flags=compatibility_flags,
            vars=vars or {}, latency=latency, limits=limits or {}, ip_locations=ip_locations or {},
            edgewise=edgewise or {},
        ))
        (root / "src" / "entry.py").write_text(textwrap.dedent(source))
        if dev_vars is not None:
            (root / ".dev.vars").write_text(textwrap.dedent(dev_vars))
        for relative, text in (files or {}).items():
            (root / relative).write_text(textwrap.dedent(text))
        return root

    return write


@pytest.fixture
def make_edge(worker_project: Callable[..., Path]) -> Callable[..., Edge]:
    """`make_edge(source, var_overrides={...}, **project options)`: the Edge serving that Worker."""

    def make(source: str, *, var_overrides: Mapping[str, str] | None = None, **project: Any) -> Edge:
        root = worker_project(source, **project)
        return Edge(load_config(root, var_overrides=var_overrides or {}))

    return make


@pytest.fixture
async def open_client() -> AsyncIterator[Callable[[Edge], httpx.AsyncClient]]:
    """An in-process httpx client on an Edge's front door; closed at the end of the test."""
    clients: list[httpx.AsyncClient] = []

    def open_for(edge: Edge) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url=BASE_URL)
        clients.append(client)
        return client

    yield open_for
    for client in clients:
        await client.aclose()


@pytest.fixture
async def edge_client(make_edge: Callable[..., Edge], open_client: Callable[[Edge], httpx.AsyncClient]
                      ) -> Callable[..., tuple[Edge, httpx.AsyncClient]]:
    """`edge_client(source, **options)`: the Edge and an in-process client to its front door."""

    def make(source: str, **options: Any) -> tuple[Edge, httpx.AsyncClient]:
        edge = make_edge(source, **options)
        return edge, open_client(edge)

    return make


class _Server(uvicorn.Server):
    # Inside pytest: leave SIGINT/SIGTERM to pytest.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Any], Any]]:
    """`await serve(app)` -> "http://127.0.0.1:PORT": uvicorn on a free port, stopped at the end of the test."""
    running: list[tuple[_Server, asyncio.Task[None], socket.socket]] = []

    async def start(app: Any) -> str:
        sock = free_socket()
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=2)
        server = _Server(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        running.append((server, task, sock))
        async with asyncio.timeout(SERVER_START_S):
            while not server.started:
                if task.done():
                    task.result()  # surfaces a start failure
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.005)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, _, _ in running:
        server.should_exit = True
    if running:
        await asyncio.wait_for(asyncio.gather(*(task for _, task, _ in running), return_exceptions=True),
                               SERVER_STOP_S)
    for _, _, sock in running:
        sock.close()


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 2.0, poll_s: float = 0.01) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(poll_s)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """`await wait_for(predicate, timeout_s=2.0)`: polls until it holds; TimeoutError fails the test."""
    return _wait_for


# ---- the bindings' stores, shared by their test files ------------------------------------------

@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kv(tmp_path: Path, clock: Clock) -> Iterator[KvNamespace]:
    namespace = KvNamespace("CACHE", KvStore(tmp_path / DATABASE_FILE), clock)
    yield namespace
    namespace.close()


@pytest.fixture
async def open_bucket(tmp_path: Path) -> AsyncIterator[BucketOpener]:
    with bucket_opener(tmp_path) as open_:
        yield open_


@pytest.fixture
async def bucket(open_bucket: BucketOpener) -> R2Bucket:
    return open_bucket()


@pytest.fixture
async def open_docs(tmp_path: Path) -> AsyncIterator[IndexOpener]:
    with docs_opener(tmp_path) as open_:
        yield open_


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """``site(assets_toml, files=..., worker=...)``: a client on the front door of an Edge serving it."""
    async with site_starter(tmp_path) as start:
        yield start
