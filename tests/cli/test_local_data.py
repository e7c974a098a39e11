"""``edgewise kv`` and ``edgewise d1``: wrangler's data commands on the files `edgewise dev` uses, so
what the CLI writes a Worker reads, and the other way round."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from edge_runtime.config import load_config
from edge_runtime.edge import Edge
from wrangler_like_cli.main import cli

WRANGLER_TOML = """\
name = "data"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]

[[kv_namespaces]]
binding = "CACHE"
id = "cache0001"

[[d1_databases]]
binding = "DB"
database_name = "notes"
database_id = "notes0001"

[[r2_buckets]]
binding = "FILES"
bucket_name = "files"

[[vectorize]]
binding = "INDEX"
index_name = "docs"
"""
WORKER = """\
from workers import Headers, Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/nearest"):
            found = await self.env.INDEX.query([1.0, 0.0, 0.0], topK=1, returnMetadata="all")
            return Response.json(found.matches[0])
        if request.url.endswith("/report"):
            found = await self.env.FILES.get("docs/report.txt")
            headers = Headers()
            found.writeHttpMetadata(headers)
            return Response(found.body, headers=headers)
        if request.url.endswith("/write"):
            await self.env.CACHE.put("from-worker", "hello")
            await self.env.DB.prepare("INSERT INTO notes (body) VALUES (?)").bind("from the worker").run()
            return Response("ok")
        notes = await self.env.DB.prepare("SELECT body FROM notes ORDER BY id").all()
        return Response.json({"greeting": await self.env.CACHE.get("greeting"),
                              "notes": [row.body for row in notes.results]})
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text(WORKER)
    (tmp_path / "wrangler.toml").write_text(WRANGLER_TOML)
    return tmp_path


def edgewise(project: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--config", str(project / "wrangler.toml")], prog_name="edgewise")


async def worker_get(project: Path, path: str) -> httpx.Response:
    edge = Edge(load_config(project))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door),
                                     base_url="http://edge") as client:
            return await client.get(path)
    finally:
        await edge.aclose()


def test_what_the_cli_writes_the_worker_reads_and_back(project: Path) -> None:
    (project / "migrations").mkdir()
    created = edgewise(project, "d1", "migrations", "create", "DB", "create notes")
    assert created.exit_code == 0, created.output
    migration = project / "migrations" / "0001_create_notes.sql"
    migration.write_text(migration.read_text() + "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n")
    assert edgewise(project, "d1", "migrations", "list", "notes").output.strip() == "0001_create_notes.sql"
    applied = edgewise(project, "d1", "migrations", "apply", "DB", "--local")
    assert applied.exit_code == 0 and "0001_create_notes.sql" in applied.output, applied.output
    assert "No migrations to apply!" in edgewise(project, "d1", "migrations", "apply", "DB").output
    inserted = edgewise(project, "d1", "execute", "DB", "--command",
                        "INSERT INTO notes (body) VALUES ('from the cli'); SELECT count(*) AS n FROM notes")
    assert inserted.exit_code == 0 and "2 statement(s)" in inserted.output, inserted.output
    put = edgewise(project, "kv", "key", "put", "greeting", "hi there", "--binding", "CACHE", "--metadata", '{"a": 1}')
    assert put.exit_code == 0, put.output

    reply = asyncio.run(worker_get(project, "/"))
    assert reply.json() == {"greeting": "hi there", "notes": ["from the cli"]}
    assert asyncio.run(worker_get(project, "/write")).text == "ok"

    assert edgewise(project, "kv", "key", "get", "from-worker", "--binding", "CACHE", "--text").output == "hello\n"
    keys = json.loads(edgewise(project, "kv", "key", "list", "--namespace-id", "cache0001").output)
    assert keys == [{"name": "from-worker"}, {"name": "greeting", "metadata": {"a": 1}}]
    rows = edgewise(project, "d1", "execute", "notes0001", "--json", "--command", "SELECT body FROM notes ORDER BY id")
    result = json.loads(rows.output)
    assert [row["body"] for row in result[0]["results"]] == ["from the cli", "from the worker"]
    assert result[0]["success"] is True and "duration" in result[0]["meta"]
    assert edgewise(project, "kv", "key", "delete", "greeting", "--binding", "CACHE").exit_code == 0
    assert edgewise(project, "kv", "key", "get", "greeting", "--binding", "CACHE").output == "Value not found\n"


@pytest.mark.parametrize(("args", "message"), [
    (["kv", "key", "get", "k", "--binding", "NOPE"], "has no kv_namespaces binding 'NOPE'; declared: CACHE"),
    (["kv", "key", "get", "k"], "--binding NAME or --namespace-id ID"),
    (["kv", "key", "put", "k" * 513, "v", "--binding", "CACHE"], "exceeds key length limit of 512"),
    (["kv", "key", "put", "k", "v", "--binding", "CACHE", "--ttl", "5"], "expiration_ttl"),
    (["kv", "key", "put", "k", "v", "--binding", "CACHE", "--remote"], "drop --remote"),
    (["d1", "execute", "DB", "--command", "SELECT * FROM missing"], "D1_ERROR: no such table: missing"),
    (["d1", "execute", "DB"], "--command or --file"),
    (["d1", "migrations", "list", "DB"], "No migrations folder"),
])
def test_a_bad_command_says_what_to_fix(project: Path, args: list[str], message: str) -> None:
    result = edgewise(project, *args)
    assert result.exit_code == 1 and message.lower() in " ".join(result.output.split()).lower(), result.output


def test_a_failed_sql_batch_changes_nothing(project: Path) -> None:
    assert edgewise(project, "d1", "execute", "DB", "--command", "CREATE TABLE t (n INTEGER)").exit_code == 0
    failed = edgewise(project, "d1", "execute", "DB", "--command", "INSERT INTO t VALUES (1); INSERT INTO nope VALUES (2)")
    assert failed.exit_code == 1
    counted = edgewise(project, "d1", "execute", "DB", "--json", "--command", "SELECT count(*) AS n FROM t")
    assert json.loads(counted.output)[0]["results"] == [{"n": 0}]


def test_r2_objects_go_in_and_out_streamed_and_the_worker_serves_them(project: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_bytes(b"line\n" * 300_000)  # 1.5 MB: several chunks each way
    put = edgewise(project, "r2", "object", "put", "files/docs/report.txt", "--file", str(report))
    assert put.exit_code == 0 and "1500000 bytes" in put.output, put.output
    served = asyncio.run(worker_get(project, "/report"))
    assert served.content == report.read_bytes() and served.headers["content-type"] == "text/plain"
    copy = tmp_path / "copy.txt"
    assert edgewise(project, "r2", "object", "get", "FILES/docs/report.txt", "--file", str(copy)).exit_code == 0
    assert copy.read_bytes() == report.read_bytes()
    assert edgewise(project, "r2", "object", "delete", "files/docs/report.txt").exit_code == 0
    missing = edgewise(project, "r2", "object", "get", "files/docs/report.txt")
    assert missing.exit_code == 1 and "The specified key does not exist: files/docs/report.txt" in missing.output
    assert "BUCKET/KEY" in edgewise(project, "r2", "object", "delete", "files").output


def test_a_vectorize_index_made_and_filled_from_the_cli_is_the_workers(project: Path, tmp_path: Path) -> None:
    assert edgewise(project, "vectorize", "create", "docs", "--dimensions", "3", "--metric", "cosine").exit_code == 0
    vectors = tmp_path / "vectors.ndjson"
    vectors.write_text('{"id": "x", "values": [1, 0, 0], "metadata": {"kind": "east"}}\n'
                       '{"id": "y", "values": [0, 1, 0], "metadata": {"kind": "north"}}\n')
    inserted = edgewise(project, "vectorize", "insert", "docs", "--file", str(vectors))
    assert inserted.exit_code == 0 and "mutationId" in inserted.output, inserted.output
    nearest = asyncio.run(worker_get(project, "/nearest")).json()
    assert nearest["id"] == "x" and nearest["metadata"] == {"kind": "east"} and nearest["score"] > 0.99
    found = json.loads(edgewise(project, "vectorize", "query", "docs", "--vector", "[0, 1, 0.1]", "--top-k", "1",
                                "--filter", '{"kind": {"$ne": "east"}}').output)
    assert [match["id"] for match in found["matches"]] == ["y"]
    assert json.loads(edgewise(project, "vectorize", "info", "docs").output)["vectorCount"] == 2
    wrong = edgewise(project, "vectorize", "query", "docs", "--vector", "[1, 0]")
    assert wrong.exit_code == 1 and "dimension" in wrong.output.lower(), wrong.output
    again = edgewise(project, "vectorize", "create", "docs", "--dimensions", "3", "--metric", "cosine")
    assert again.exit_code == 1 and "already exists" in again.output


def test_the_help_names_the_data_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"], prog_name="edgewise")
    assert "kv, d1, r2, vectorize" in result.output
