"""env.<KV>'s store: expiry, persistence, closing, many concurrent writers, and a restarted edge."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from config_projects import BASE_TOML, make_project
from edge_runtime.bindings import StateDir
from edge_runtime.bindings.kv import DATABASE_FILE, KvNamespace, KVError, open_binding
from edge_runtime.bindings.kv_store import KvStore
from edge_runtime.config import ConfigError, load_config
from edge_runtime.edge import Edge
from kv_fixtures import NOW, Clock, spec


# -- expiry --------------------------------------------------------------------------------------------

async def test_a_key_with_expiration_ttl_is_gone_once_it_expires(kv: KvNamespace, clock: Clock) -> None:
    await kv.put("ttl", "short-lived", expirationTtl=60, metadata={"m": 1})
    await kv.put("kept", "forever")
    clock.now += 59
    assert await kv.get("ttl") == "short-lived"
    assert [key.name for key in (await kv.list())["keys"]] == ["kept", "ttl"]
    clock.now += 1
    assert await kv.get("ttl") is None
    assert await kv.getWithMetadata("ttl") == {"value": None, "metadata": None, "cacheStatus": None}
    assert await kv.get(["ttl", "kept"]) == {"ttl": None, "kept": "forever"}
    assert [key.name for key in (await kv.list())["keys"]] == ["kept"]


async def test_an_absolute_expiration_is_honoured(kv: KvNamespace, clock: Clock) -> None:
    expires_at = int(NOW) + 3600
    await kv.put("abs", "v", {"expiration": expires_at})
    assert (await kv.list())["keys"] == [{"name": "abs", "expiration": expires_at}]
    clock.now = expires_at - 0.5
    assert await kv.get("abs") == "v"
    clock.now = expires_at
    assert await kv.get("abs") is None and (await kv.list())["keys"] == []


async def test_expired_rows_are_purged_from_the_file_by_later_writes(kv: KvNamespace, clock: Clock,
                                                                      tmp_path: Path) -> None:
    await kv.put("old", "v", expirationTtl=60)
    clock.now += 61
    await kv.put("new", "v")
    with sqlite3.connect(tmp_path / DATABASE_FILE) as connection:
        assert connection.execute("SELECT key FROM entries").fetchall() == [("new",)]


@pytest.mark.parametrize(("options", "message"), [
    ({"expirationTtl": 59}, "KV PUT failed: 400 Invalid expiration_ttl of 59. Expiration TTL must be at least 60."),
    ({"expirationTtl": 0}, "KV PUT failed: 400 Invalid expiration_ttl of 0. Please specify integer greater than 0."),
    ({"expiration": int(NOW) + 59}, f"KV PUT failed: 400 Invalid expiration of {int(NOW) + 59}. Expiration times "
                                    "must be at least 60 seconds in the future."),
    ({"expiration": int(NOW) - 5}, f"KV PUT failed: 400 Invalid expiration of {int(NOW) - 5}. Please specify "
                                   "integer greater than the current number of seconds since the UNIX epoch."),
])
async def test_expiry_too_soon_is_refused(kv: KvNamespace, options: dict, message: str) -> None:
    with pytest.raises(KVError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        await kv.put("k", "v", options)
    with pytest.raises(KVError, match="^KV PUT failed: 400 Invalid expiration"):
        await kv.put("k", "v", **options)
    assert await kv.get("k") is None


async def test_expiration_must_be_a_number(kv: KvNamespace) -> None:
    with pytest.raises(TypeError, match="KV put\\(\\) expirationTtl must be a number of seconds, got str '60'"):
        await kv.put("k", "v", expirationTtl="60")


# -- storage: where, persistence, sharing, never blocking the loop --------------------------------------

async def test_data_survives_closing_and_reopening(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "v3")
    first = open_binding(spec(id="ns-1"), state)
    await first.put("k", json.dumps({"kept": True}), metadata={"m": "x"})
    first.close()
    assert (tmp_path / "v3" / "kv" / "ns-1" / DATABASE_FILE).is_file()
    with pytest.raises(RuntimeError, match="is closed"):
        await first.get("k")
    second = open_binding(spec(id="ns-1"), state)
    try:
        assert (await second.getWithMetadata("k", "json")) == {"value": {"kept": True}, "metadata": {"m": "x"},
                                                                "cacheStatus": None}
    finally:
        second.close()


async def test_the_namespace_folder_is_preview_id_then_id_then_binding_name(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    for settings, folder in [({"id": "a1", "preview_id": "p1"}, "p1"), ({"id": "a1"}, "a1"), ({}, "CACHE")]:
        binding = open_binding(spec(**settings), state)
        await binding.put("where", folder)
        binding.close()
        assert (tmp_path / "kv" / folder / DATABASE_FILE).is_file()
    with pytest.raises(ConfigError, match="binding 'CACHE': the namespace id must be a plain name"):
        open_binding(spec(id="../elsewhere"), state)


def test_the_database_is_in_wal_mode(kv: KvNamespace, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DATABASE_FILE) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_sqlite_work_runs_off_the_event_loop(tmp_path: Path) -> None:
    # Another process holds the write lock: the put waits for it in a worker thread while the loop serves reads.
    kv = KvNamespace("CACHE", KvStore(tmp_path / DATABASE_FILE, busy_timeout_s=10))
    await kv.put("read-me", "still readable")
    other = sqlite3.connect(tmp_path / DATABASE_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        writing = asyncio.create_task(kv.put("k", "v"))
        assert await asyncio.wait_for(kv.get("read-me"), 5) == "still readable"
        await asyncio.sleep(0.2)
        assert not writing.done()
    finally:
        other.execute("COMMIT")
        other.close()
    await asyncio.wait_for(writing, 10)
    assert await kv.get("k") == "v"
    kv.close()


async def test_closing_while_a_call_runs_lets_that_call_finish(tmp_path: Path) -> None:
    kv = KvNamespace("CACHE", KvStore(tmp_path / DATABASE_FILE, busy_timeout_s=10))
    other = sqlite3.connect(tmp_path / DATABASE_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        writing = asyncio.create_task(kv.put("in-flight", "done"))
        while not kv._store._db._in_use:  # until the put waits for the lock, in its thread, on its connection
            await asyncio.sleep(0.01)
        kv.close()  # as an edge that stops or reloads does
        with pytest.raises(RuntimeError, match="is closed"):
            await kv.get("in-flight")
    finally:
        other.execute("COMMIT")
        other.close()
    await asyncio.wait_for(writing, 10)
    reopened = KvNamespace("CACHE", KvStore(tmp_path / DATABASE_FILE))
    assert await reopened.get("in-flight") == "done"
    reopened.close()


async def test_six_pops_of_fifty_writers_sharing_one_binding_lose_nothing(kv: KvNamespace) -> None:
    async def pop(colo: int) -> None:
        await asyncio.gather(*(kv.put(f"pop{colo}:writer{writer:02d}", f"{colo}-{writer}") for writer in range(50)))

    await asyncio.gather(*(pop(colo) for colo in range(6)))
    listed = await kv.list()
    assert len(listed["keys"]) == 300 and listed.list_complete
    values = await kv.get([f"pop3:writer{writer:02d}" for writer in range(50)])
    assert values == {f"pop3:writer{writer:02d}": f"3-{writer}" for writer in range(50)}


def test_six_threads_with_their_own_binding_on_one_folder_lose_nothing(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    errors: list[BaseException] = []

    def pop(colo: int) -> None:
        async def writers() -> None:
            binding = open_binding(spec(id="shared"), state)  # one object per thread: as separate processes would
            try:
                await asyncio.gather(*(binding.put(f"pop{colo}:writer{writer:02d}", str(writer))
                                       for writer in range(50)))
            finally:
                binding.close()
        try:
            asyncio.run(writers())
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=pop, args=(colo,)) for colo in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    reader = open_binding(spec(id="shared"), state)
    try:
        listed = asyncio.run(reader.list())
        assert [key.name for key in listed["keys"]] == sorted(f"pop{c}:writer{w:02d}" for c in range(6) for w in range(50))
    finally:
        reader.close()


# -- through the edge --------------------------------------------------------------------------------------

KV_TOML = BASE_TOML + """
[[kv_namespaces]]
binding = "CACHE"
id = "e2e0001"
"""

WORKER = """\
import json
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.method == "POST":
            await self.env.CACHE.put("user:1", json.dumps({"name": "Ada"}), metadata={"by": "worker"})
            await self.env.CACHE.put("user:2", json.dumps({"name": "Grace"}), {"expirationTtl": 3600})
            await self.env.CACHE.put("other", "x")
        user = await self.env.CACHE.get("user:1", type="json")
        listed = await self.env.CACHE.list(prefix="user:")
        return Response.json({
            "name": None if user is None else user.name,
            "names": [key.name for key in listed["keys"]],
            "metadata": [key.get("metadata") for key in listed["keys"]],
            "has_expiration": ["expiration" in key for key in listed["keys"]],
            "complete": listed.list_complete,
        })
"""


async def call_edge(project: Path, method: str) -> httpx.Response:
    edge = Edge(load_config(project))
    try:
        transport = httpx.ASGITransport(app=edge.front_door)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return await client.request(method, "/")
    finally:
        await edge.aclose()


async def test_a_worker_uses_kv_and_a_restarted_edge_reads_what_it_wrote(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"wrangler.toml": KV_TOML, "src/entry.py": WORKER})
    expected = {"name": "Ada", "names": ["user:1", "user:2"], "metadata": [{"by": "worker"}, None],
                "has_expiration": [False, True], "complete": True}
    written = await call_edge(project, "POST")
    assert written.status_code == 200, written.text
    assert written.json() == expected
    reread = await call_edge(project, "GET")  # a new Edge on the same project: a restart
    assert reread.status_code == 200, reread.text
    assert reread.json() == expected
    assert (tmp_path / ".wrangler" / "state" / "v3" / "kv" / "e2e0001" / DATABASE_FILE).is_file()
