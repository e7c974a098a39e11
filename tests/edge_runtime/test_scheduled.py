"""Cron triggers in dev: ``/__scheduled`` and ``/cdn-cgi/handler/scheduled`` run ``scheduled`` (checklist 15)."""

from __future__ import annotations

import logging
import time

import pytest

CRON = """
    from workers import Response, WorkerEntrypoint

    RUNS = []

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response("fetch")

        async def scheduled(self, controller, env, ctx):
            if controller.cron == "0 0 * * *":
                raise RuntimeError("nightly job failed")
            RUNS.append((controller.cron, controller.scheduledTime, controller.type, env, ctx,
                         self.env.MESSAGE))
"""


def _runs(edge) -> list:
    return edge.pop("DFW").worker.module.RUNS


@pytest.mark.parametrize("path", ["/__scheduled", "/cdn-cgi/handler/scheduled"])
async def test_scheduled_runs_with_cron_and_time(edge_client, path: str) -> None:
    edge, client = edge_client(CRON, pops=("DFW",), vars={"MESSAGE": "cron env"})
    response = await client.get(f"{path}?cron=*+*+*+*+*&time=1000")
    assert (response.status_code, response.text) == (200, "ok")
    assert _runs(edge) == [("* * * * *", 1000, "scheduled", None, None, "cron env")]
    assert (await client.get("/")).text == "fetch"


async def test_scheduled_defaults_to_now(edge_client) -> None:
    edge, client = edge_client(CRON, pops=("DFW",), vars={"MESSAGE": "m"})
    before_ms = int(time.time() * 1000)
    response = await client.get("/__scheduled?cron=*/5+*+*+*+*")
    assert response.text == "ok"
    [(cron, scheduled_ms, *_)] = _runs(edge)
    assert cron == "*/5 * * * *"
    assert before_ms <= scheduled_ms <= int(time.time() * 1000)


async def test_raising_scheduled_handler_is_500_exception(edge_client, caplog) -> None:
    edge, client = edge_client(CRON, pops=("DFW",), vars={"MESSAGE": "m"})
    with caplog.at_level(logging.ERROR, logger="edgewise.edge"):
        response = await client.get("/cdn-cgi/handler/scheduled?cron=0+0+*+*+*")
    assert (response.status_code, response.text) == (500, "exception")
    [record] = [r for r in caplog.records if r.name == "edgewise.edge"]
    assert "nightly job failed" in record.getMessage() and "DFW" in record.getMessage()
    assert (await client.get("/__scheduled?cron=*+*+*+*+*")).text == "ok"


async def test_format_json(edge_client) -> None:
    _, client = edge_client(CRON, pops=("DFW",), vars={"MESSAGE": "m"})
    response = await client.get("/__scheduled?cron=*+*+*+*+*&format=json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"outcome": "ok", "noRetry": False}
    response = await client.get("/__scheduled?cron=0+0+*+*+*&format=json")
    assert response.status_code == 500
    assert response.json() == {"outcome": "exception", "noRetry": False}


async def test_legacy_on_scheduled(edge_client) -> None:
    edge, client = edge_client("""
        from workers import Response

        RUNS = []

        async def on_fetch(request):
            return Response("fetch")

        async def on_scheduled(controller, env, ctx):
            RUNS.append((controller.cron, controller.scheduledTime, env.MESSAGE))
    """, pops=("DFW",), compatibility_date="2024-01-01", vars={"MESSAGE": "legacy"})
    assert (await client.get("/__scheduled?cron=*+*+*+*+*&time=1000")).text == "ok"
    assert _runs(edge) == [("* * * * *", 1000, "legacy")]


async def test_worker_without_scheduled_is_500_exception(edge_client) -> None:
    _, client = edge_client("""
        from workers import Response, WorkerEntrypoint

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response("fetch")
    """, pops=("DFW",))
    response = await client.get("/__scheduled")
    assert (response.status_code, response.text) == (500, "exception")
