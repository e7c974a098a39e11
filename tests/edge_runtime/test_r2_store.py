"""R2's store: large bodies through disk, many writers at once, persistence, and a Worker on a restarted edge."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from config_projects import BASE_TOML, make_project
from r2_fixtures import SETTINGS, Opener, chunks, folder, stored_files

from edge_runtime.bindings import StateDir
from edge_runtime.bindings.r2 import R2Bucket, bucket_folder, open_binding
from edge_runtime.config import BindingSpec, load_config
from edge_runtime.config_error import ConfigError
from edge_runtime.edge import Edge

MiB = 1024 * 1024


# --- large bodies go through disk, not memory --------------------------------------------------------

async def test_a_20_mib_body_streams_in_and_out_without_being_held_in_memory(
        bucket: R2Bucket, tmp_path: Path) -> None:
    chunk_bytes, num_chunks = 64 * 1024, 320
    sent = hashlib.md5()

    async def produce() -> AsyncIterator[bytes]:
        for number in range(num_chunks):
            chunk = number.to_bytes(4, "big") * (chunk_bytes // 4)
            sent.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        put = await bucket.put("large", produce())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = await bucket.get("large")
        received, num_received = hashlib.md5(), 0
        async for chunk in got.body:
            received.update(chunk)
            num_received += 1
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    body_bytes = chunk_bytes * num_chunks
    assert put.size == body_bytes and put.etag == sent.hexdigest() == received.hexdigest()
    assert num_received >= body_bytes // (64 * 1024)
    assert (folder(tmp_path) / "blobs" / next((folder(tmp_path) / "blobs").iterdir()).name).stat().st_size \
        == body_bytes
    assert put_peak < 4 * MiB and get_peak < 2 * MiB, (put_peak, get_peak)  # far below the 20 MiB body


async def test_an_unread_body_releases_its_file(bucket: R2Bucket) -> None:
    await bucket.put("k", "v")
    got = await bucket.get("k")
    file = got._chunks._file  # type: ignore[union-attr]
    del got
    assert file.closed


# --- many writers, restarts ----------------------------------------------------------------------------

async def test_six_pops_of_fifty_writers_lose_nothing(open_bucket: Opener, tmp_path: Path) -> None:
    pops = [open_bucket() for _ in range(6)]  # as many bindings on one folder as separate processes would open

    async def write(pop: int, writer: int) -> None:
        await pops[pop].put(f"pop-{pop}/writer-{writer:02d}", chunks(f"{pop}:".encode(), f"{writer}".encode()))

    await asyncio.gather(*(write(pop, writer) for pop in range(6) for writer in range(50)))
    listed = await pops[0].list()
    assert len(listed.objects) == 300 and listed.truncated is False
    for pop in range(6):
        assert await (await pops[5 - pop].get(f"pop-{pop}/writer-49")).text() == f"{pop}:49"
    assert min(obj.size for obj in listed.objects) >= 3
    assert len(stored_files(tmp_path)[0]) == 300


async def test_concurrent_puts_to_one_key_leave_one_whole_object(open_bucket: Opener, tmp_path: Path) -> None:
    pops = [open_bucket() for _ in range(3)]
    bodies = [bytes([number]) * (256 * 1024 + number) for number in range(12)]

    async def write(number: int) -> None:
        body = bodies[number]
        await pops[number % 3].put("same", chunks(body[:100_000], body[100_000:]))

    await asyncio.gather(*(write(number) for number in range(12)))
    got = await pops[1].get("same")
    data = await got.arrayBuffer()
    assert data in bodies and got.size == len(data) and got.etag == hashlib.md5(data).hexdigest()
    assert len(stored_files(tmp_path)[0]) == 1 and stored_files(tmp_path)[1] == []


async def test_objects_survive_close_and_reopen(open_bucket: Opener) -> None:
    first = open_bucket()
    put = await first.put("kept", "across restarts", customMetadata={"v": "1"})
    first.close()
    with pytest.raises(RuntimeError, match="is closed"):
        await first.head("kept")
    reopened = open_bucket()
    got = await reopened.get("kept")
    assert await got.text() == "across restarts" and got.version == put.version and got.uploaded == put.uploaded


def test_the_bucket_lives_under_its_name_and_jurisdiction(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert bucket_folder(state, "files") == tmp_path / "r2" / "files"
    assert bucket_folder(state, "files", "eu") == tmp_path / "r2" / "files.eu"
    with pytest.raises(ConfigError, match="bucket_name must be 3 to 63 lower-case letters"):
        open_binding(BindingSpec("r2_buckets", "FILES", {"binding": "FILES", "bucket_name": "My_Files"}), state)
    with pytest.raises(ConfigError, match="bucket_name must be"):
        open_binding(BindingSpec("r2_buckets", "FILES", {"binding": "FILES"}), state)
    with pytest.raises(ConfigError, match="jurisdiction must be one of eu, fedramp"):
        open_binding(BindingSpec("r2_buckets", "FILES", {**SETTINGS, "jurisdiction": "mars"}), state)


# --- end to end: a Worker on the edge, then a restart -------------------------------------------------

FILES_WORKER = """\
from urllib.parse import urlsplit
from workers import Headers, Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        key = urlsplit(request.url).path[1:]
        if request.method == "PUT":
            stored = await self.env.FILES.put(key, request.body, httpMetadata=request.headers,
                                              customMetadata={"by": "worker"})
            return Response.json({"key": stored.key, "size": stored.size, "etag": stored.etag})
        if request.method == "DELETE":
            await self.env.FILES.delete(key)
            return Response(None, status=204)
        if key == "":
            listed = await self.env.FILES.list(include=["customMetadata"])
            return Response.json([[obj.key, obj.size, obj.customMetadata["by"]] for obj in listed.objects])
        obj = await self.env.FILES.get(key, range=request.headers)
        if obj is None:
            return Response("no such file", status=404)
        headers = Headers()
        obj.writeHttpMetadata(headers)
        headers.set("etag", obj.httpEtag)
        return Response(obj.body, headers=headers)
"""

FILES_TOML = BASE_TOML + """
[[r2_buckets]]
binding = "FILES"
bucket_name = "files"
"""


async def call_edge(project: Path, requests: list[tuple[str, str, dict[str, object]]]) -> list[httpx.Response]:
    edge = Edge(load_config(project))
    try:
        transport = httpx.ASGITransport(app=edge.front_door)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return [await client.request(method, path, **options) for method, path, options in requests]
    finally:
        await edge.aclose()


async def test_a_worker_stores_request_bodies_and_streams_them_back_after_a_restart(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"wrangler.toml": FILES_TOML, "src/entry.py": FILES_WORKER})
    photo = bytes(range(256)) * 4096  # 1 MiB

    async def upload() -> AsyncIterator[bytes]:
        for start in range(0, len(photo), 100_000):
            yield photo[start:start + 100_000]

    stored, fetched, missing = await call_edge(project, [
        ("PUT", "/photos/cat.bin", {"content": upload(), "headers": {"content-type": "image/x-cat"}}),
        ("GET", "/photos/cat.bin", {}),
        ("GET", "/photos/dog.bin", {})])
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"key": "photos/cat.bin", "size": len(photo), "etag": hashlib.md5(photo).hexdigest()}
    assert fetched.status_code == 200 and fetched.content == photo
    assert fetched.headers["content-type"] == "image/x-cat"
    assert fetched.headers["etag"] == f'"{hashlib.md5(photo).hexdigest()}"'
    assert missing.status_code == 404
    assert (tmp_path / ".wrangler" / "state" / "v3" / "r2" / "files" / "index.sqlite").is_file()

    listed, ranged, deleted, gone = await call_edge(project, [
        ("GET", "/", {}), ("GET", "/photos/cat.bin", {"headers": {"range": "bytes=256-259"}}),
        ("DELETE", "/photos/cat.bin", {}), ("GET", "/photos/cat.bin", {})])
    assert listed.json() == [["photos/cat.bin", len(photo), "worker"]]
    assert ranged.content == bytes([0, 1, 2, 3]) and ranged.headers["content-type"] == "image/x-cat"
    assert deleted.status_code == 204 and gone.status_code == 404
    assert json.loads(listed.text)[0][0] == "photos/cat.bin"
