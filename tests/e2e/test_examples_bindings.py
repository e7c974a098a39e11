"""examples/kv-counter and examples/d1-notes, unchanged, on the edge in this process, their data in a
folder of the test's own (--persist-to), and through a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner

from edge_runtime.config import load_config
from edge_runtime.edge import Edge
from wrangler_like_cli.main import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def requests(example: str, state: Path, calls: list[tuple[str, str, Any]]) -> list[httpx.Response]:
    """One edge run of the example: the calls in order, then the edge stops (a restart follows)."""
    edge = Edge(load_config(EXAMPLES / example), persist_to=state)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door),
                                     base_url="http://localhost") as client:
            return [await client.request(method, path, json=body) for method, path, body in calls]
    finally:
        await edge.aclose()


def test_kv_counter_counts_per_page_and_keeps_counting_after_a_restart(tmp_path: Path) -> None:
    first = asyncio.run(requests("kv-counter", tmp_path, [("GET", "/hello", None)] * 2 + [("GET", "/a", None)]))
    assert [reply.json() for reply in first] == [{"page": "/hello", "count": 1}, {"page": "/hello", "count": 2},
                                                 {"page": "/a", "count": 1}]
    again = asyncio.run(requests("kv-counter", tmp_path, [("GET", "/hello", None), ("GET", "/counts", None)]))
    assert again[0].json()["count"] == 3 and again[1].json() == {"/a": 1, "/hello": 3}
    assert not (EXAMPLES / "kv-counter" / ".wrangler").exists()  # the data went to --persist-to


def test_d1_notes_after_its_migrations(tmp_path: Path) -> None:
    applied = CliRunner().invoke(cli, ["d1", "migrations", "apply", "DB", "--local", "--persist-to", str(tmp_path),
                                       "-c", str(EXAMPLES / "d1-notes" / "wrangler.jsonc")])
    assert applied.exit_code == 0 and "0002_add_tags.sql" in applied.output, applied.output
    first = asyncio.run(requests("d1-notes", tmp_path, [
        ("POST", "/notes", {"body": "buy milk", "tag": "home"}), ("POST", "/notes", {"body": "ship it", "tag": "work"}),
        ("POST", "/notes", {"tag": "empty"}), ("DELETE", "/notes/2", None)]))
    assert [reply.status_code for reply in first] == [201, 201, 400, 200]
    assert first[0].json() == {"id": 1} and first[3].json() == {"deleted": 1}
    again = asyncio.run(requests("d1-notes", tmp_path, [("GET", "/notes", None), ("GET", "/notes?tag=work", None)]))
    assert again[0].json() == [{"id": 1, "body": "buy milk", "tag": "home"}] and again[1].json() == []
