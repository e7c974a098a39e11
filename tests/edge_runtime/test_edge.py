"""The Edge: one isolated Worker instance per PoP, reloads, and waitUntil work after the response."""

from __future__ import annotations

import logging
import sys
import textwrap
import time

import pytest

from edge_runtime.config import load_config
from edge_runtime.loader import WorkerLoadError

AT_DFW = {"edgewise-client-location": "DFW"}
AT_LHR = {"edgewise-client-location": "LHR"}

COUNTER = """
    import state
    from workers import Response, WorkerEntrypoint

    COUNT = 0

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            global COUNT
            COUNT += 1
            return Response(f"{request.cf.colo} module={COUNT} helper={state.bump()}")
"""
STATE = """
    HITS = []

    def bump():
        HITS.append(1)
        return len(HITS)
"""


async def test_module_globals_are_per_pop(edge_client) -> None:
    edge, client = edge_client(COUNTER, files={"src/state.py": STATE})
    seen = [(await client.get("/", headers=AT_DFW)).text for _ in range(3)]
    seen.append((await client.get("/", headers=AT_LHR)).text)
    seen.append((await client.get("/", headers=AT_DFW)).text)
    assert seen == ["DFW module=1 helper=1", "DFW module=2 helper=2", "DFW module=3 helper=3",
                    "LHR module=1 helper=1", "DFW module=4 helper=4"]
    dfw, lhr = edge.pop("DFW").worker.module, edge.pop("LHR").worker.module
    assert dfw is not lhr and dfw.state is not lhr.state
    assert (dfw.COUNT, lhr.COUNT, len(dfw.state.HITS), len(lhr.state.HITS)) == (4, 1, 4, 1)


async def test_workers_env_at_import_time_sees_the_vars(edge_client) -> None:
    _, client = edge_client("""
        from workers import Response, WorkerEntrypoint, env

        GREETING = env.GREETING  # read while the module loads

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                from workers import env as during_request
                return Response(f"{GREETING} / {during_request.GREETING}")
    """, vars={"GREETING": "hello from vars"})
    assert (await client.get("/")).text == "hello from vars / hello from vars"


VERSION = """
    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response("{text} " + self.env.MESSAGE)
"""


@pytest.fixture
def writes_bytecode(monkeypatch) -> None:
    """As for most users (not PYTHONDONTWRITEBYTECODE): a stale __pycache__ must not win on reload."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


async def test_reload_serves_new_code_and_keeps_old_on_error(edge_client, writes_bytecode) -> None:
    edge, client = edge_client(VERSION.format(text="version A"), vars={"MESSAGE": "one"})
    entry = edge.config.main
    assert (await client.get("/", headers=AT_LHR)).text == "version A one"

    # same length and (most likely) the same mtime second: the new source must still win
    entry.write_text(textwrap.dedent(VERSION.format(text="version B")))
    wrangler = edge.config.file
    wrangler.write_text(wrangler.read_text().replace('MESSAGE = "one"', 'MESSAGE = "two"'))
    edge.reload(load_config(edge.config.root))
    assert (await client.get("/", headers=AT_LHR)).text == "version B two"
    assert (await client.get("/", headers=AT_DFW)).text == "version B two"

    entry.write_text("from workers import Response\nclass Default(:\n")
    with pytest.raises(WorkerLoadError, match="SyntaxError"):
        edge.reload()
    assert (await client.get("/", headers=AT_DFW)).text == "version B two"
    assert (await client.get("/", headers=AT_LHR)).text == "version B two"


async def test_reload_picks_up_an_edited_helper_module(edge_client, writes_bytecode) -> None:
    edge, client = edge_client("""
        import greeting
        from workers import Response, WorkerEntrypoint

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response(greeting.TEXT)
    """, files={"src/greeting.py": 'TEXT = "AAAA"\n'})
    assert (await client.get("/")).text == "AAAA"
    (edge.config.root / "src" / "greeting.py").write_text('TEXT = "BBBB"\n')  # same size, same second
    edge.reload()
    assert (await client.get("/")).text == "BBBB"


async def test_reload_keeps_module_state_per_pop_fresh(edge_client) -> None:
    edge, client = edge_client(COUNTER, files={"src/state.py": STATE})
    assert (await client.get("/", headers=AT_DFW)).text == "DFW module=1 helper=1"
    assert (await client.get("/", headers=AT_DFW)).text == "DFW module=2 helper=2"
    edge.reload()
    assert (await client.get("/", headers=AT_DFW)).text == "DFW module=1 helper=1"


WAIT_UNTIL = """
    import asyncio
    from workers import Response, WorkerEntrypoint

    RECORDS = []

    async def record_later(what):
        await asyncio.sleep(0.3)
        RECORDS.append(what)

    async def fail_later():
        await asyncio.sleep(0.01)
        raise RuntimeError("background boom")

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            if request.url.endswith("/fail"):
                self.ctx.waitUntil(fail_later())
            else:
                self.ctx.waitUntil(record_later("done"))
            return Response(f"records={len(RECORDS)}")
"""


async def test_wait_until_runs_after_the_response(edge_client, wait_for) -> None:
    edge, client = edge_client(WAIT_UNTIL, pops=("DFW",))
    records = edge.pop("DFW").worker.module.RECORDS
    started = time.perf_counter()
    response = await client.get("/")
    elapsed = time.perf_counter() - started
    assert (response.status_code, response.text) == (200, "records=0")
    assert elapsed < 0.25
    assert records == []
    await wait_for(lambda: records == ["done"], timeout_s=3)
    assert time.perf_counter() - started >= 0.3


async def test_failing_wait_until_is_logged_not_sent(edge_client, wait_for, caplog) -> None:
    edge, client = edge_client(WAIT_UNTIL, pops=("DFW",))
    with caplog.at_level(logging.ERROR, logger="edgewise.worker"):
        response = await client.get("/fail")
        assert (response.status_code, response.text) == (200, "records=0")
        assert "background boom" not in response.text
        await wait_for(lambda: any("waitUntil task failed" in r.getMessage() for r in caplog.records))
    [record] = [r for r in caplog.records if "waitUntil task failed" in r.getMessage()]
    assert record.name == "edgewise.worker"
    assert "DFW" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "background boom"
    assert (await client.get("/")).status_code == 200
