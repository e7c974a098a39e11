"""Shared pieces of the static-assets tests: a site on disk, an Edge serving it, and a navigation's headers."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from edge_runtime.config import load_config
from edge_runtime.edge import Edge

WORKER = """\
from urllib.parse import urlsplit
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlsplit(request.url).path
        if path.startswith("/binding/"):  # the asset router's answer, through env.ASSETS
            return await self.env.ASSETS.fetch("https://any.host/" + request.url.split("/binding/", 1)[1],
                                               headers=dict(request.headers))
        if path == "/binding-request":
            return await self.env.ASSETS.fetch(request)
        return Response(f"worker {request.method} {path}", status=299)
"""

SITE = {
    "index.html": "<h1>home</h1>",
    "about.html": "<h1>about</h1>",
    "blog/index.html": "<h1>blog</h1>",
    "blog/404.html": "blog not found",
    "404.html": "site not found",
    "css/site.css": "body{}",
    "js/app.js": "console.log(1)",
    "data.json": "{}",
    "notes.txt": "0123456789",
}


def write_site(root: Path, assets: str, files: dict[str, str | bytes] = SITE, worker: str = WORKER,
               compatibility_date: str = "2025-11-02") -> Path:
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "entry.py").write_text(worker)
    (root / "wrangler.toml").write_text(textwrap.dedent(f"""\
        name = "site"
        main = "src/entry.py"
        compatibility_date = "{compatibility_date}"
        compatibility_flags = ["python_workers"]

        [edgewise]
        pops = ["DFW", "LHR", "SIN"]
        latency = false

        [assets]
        directory = "./public"
        binding = "ASSETS"
        """) + textwrap.dedent(assets))
    for name, content in files.items():
        path = root / "public" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root



@asynccontextmanager
async def site_starter(tmp_path: Path) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """``start(assets_toml, files=..., worker=...)``: a client on the front door of an Edge serving it."""
    edges: list[Edge] = []
    clients: list[httpx.AsyncClient] = []

    def start(assets: str = "", **options) -> httpx.AsyncClient:
        edge = Edge(load_config(write_site(tmp_path / f"site{len(edges)}", assets, **options)))
        edges.append(edge)
        clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url="http://edge"))
        return clients[-1]

    try:
        yield start
    finally:
        for client in clients:
            await client.aclose()
        for edge in edges:
            await edge.aclose()


NAVIGATE = {"sec-fetch-mode": "navigate"}
