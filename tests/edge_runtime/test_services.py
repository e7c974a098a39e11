"""Service bindings between two Workers of one edge: fetch, RPC, named entrypoints, errors across the boundary."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from edge_runtime.config import ConfigError, load_config
from edge_runtime.edge import Edge

from config_projects import make_project

CALLER_TOML = """\
name = "front"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]

[[services]]
binding = "BACK"
service = "back"

[[services]]
binding = "ADMIN"
service = "back"
entrypoint = "Admin"

[[services]]
binding = "GONE"
service = "not-running"
"""

CALLER = '''\
import json
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = request.url.split("/", 3)[3]
        try:
            if path == "fetch":
                reply = await self.env.BACK.fetch("https://back/hello?x=1", method="POST", body="ping")
                return Response(f"{reply.status} {await reply.text()}")
            if path == "rpc":
                total = await self.env.BACK.add(2, 3)
                info = await self.env.BACK.describe({"name": "ada", "tags": ["a", "b"]})
                return Response(json.dumps([total, info.name, info["tags"], type(info).__name__]))
            if path == "admin":
                return Response(await self.env.ADMIN.whoami())
            if path == "admin-fetch":
                reply = await self.env.ADMIN.fetch("https://back/x")
                return Response(await reply.text())
            if path == "raises":
                await self.env.BACK.fail("disk full")
            if path == "missing":
                await self.env.BACK.nothing_here()
            if path == "private":
                await self.env.BACK._secret()
            if path == "tuple":
                await self.env.BACK.add((1, 2), 3)
            if path == "gone":
                await self.env.GONE.fetch("https://gone/")
            if path == "callback":
                return Response(str(await self.env.BACK.apply(lambda value: value * 10, 4)))
        except Exception as error:
            return Response(f"{type(error).__name__}: {error}", status=500)
        return Response("no such test", status=404)
'''

CALLEE_TOML = """\
name = "back"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]

[vars]
GREETING = "hello from back"
"""

CALLEE = '''\
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"{request.method} {request.url} {await request.text()} {self.env.GREETING}")

    def add(self, a, b):
        return a + b

    async def describe(self, person):
        return {"name": person.name, "tags": person["tags"] + ["seen"]}

    async def fail(self, why):
        raise ValueError(why)

    async def apply(self, function, value):
        return await function(value) + 1

    def _secret(self):
        return "never"


class Admin(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("admin fetch")

    def whoami(self):
        return "admin of " + self.env.GREETING
'''


@pytest.fixture
async def client(tmp_path: Path):
    front = load_config(make_project(tmp_path / "front", {"wrangler.toml": CALLER_TOML, "src/entry.py": CALLER}))
    back = load_config(make_project(tmp_path / "back", {"wrangler.toml": CALLEE_TOML, "src/entry.py": CALLEE}))
    edge = Edge(front, workers=[back], persist_to=tmp_path / "state")
    try:
        transport = httpx.ASGITransport(app=edge.front_door)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            yield client
    finally:
        await edge.aclose()


async def test_fetch_reaches_the_other_workers_default_entrypoint(client: httpx.AsyncClient) -> None:
    reply = await client.get("/fetch")
    assert reply.text == "200 POST https://back/hello?x=1 ping hello from back"


async def test_rpc_calls_public_methods_and_copies_values_both_ways(client: httpx.AsyncClient) -> None:
    reply = await client.get("/rpc")
    assert reply.json() == [5, "ada", ["a", "b", "seen"], "JsDict"]


async def test_a_named_entrypoint_takes_rpc_and_fetch(client: httpx.AsyncClient) -> None:
    assert (await client.get("/admin")).text == "admin of hello from back"
    assert (await client.get("/admin-fetch")).text == "admin fetch"


async def test_a_function_sent_over_rpc_can_be_called_back(client: httpx.AsyncClient) -> None:
    assert (await client.get("/callback")).text == "41"


@pytest.mark.parametrize(("path", "expected"), [
    ("raises", "JsException: ValueError: disk full"),
    ("missing", 'TypeError: The RPC receiver does not implement the method "nothing_here".'),
    ("private", "AttributeError: _secret"),
    ("tuple", "TypeError: tuple cannot be sent over RPC (argument 0 of add())"),
    ("gone", "RuntimeError: env.GONE: no Worker named 'not-running' runs in this edge"),
])
async def test_errors_reach_the_caller_with_the_reason(client: httpx.AsyncClient, path: str, expected: str) -> None:
    reply = await client.get(f"/{path}")
    assert reply.status_code == 500
    assert reply.text.startswith(expected)


def test_two_workers_with_one_name_are_refused(tmp_path: Path) -> None:
    front = load_config(make_project(tmp_path / "a", {"wrangler.toml": CALLEE_TOML, "src/entry.py": CALLEE}))
    twin = load_config(make_project(tmp_path / "b", {"wrangler.toml": CALLEE_TOML, "src/entry.py": CALLEE}))
    with pytest.raises(ConfigError, match="'back' is also the name of"):
        Edge(front, workers=[twin], persist_to=tmp_path / "state")
