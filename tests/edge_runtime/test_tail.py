"""``/cdn-cgi/edgewise/tail``: a real WebSocket subscriber receives one event per invocation, with its logs."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

TAILED = """
    import logging
    from workers import Response, WorkerEntrypoint

    try:
        from js import console
    except ImportError:  # the js shim is optional
        console = None

    def say(message):
        if console is not None:
            console.log(message)
        else:
            logging.getLogger("edgewise.worker").info(message)

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            say("hello")
            if request.url.endswith("/fail"):
                raise ValueError("tail me")
            return Response("ok")
"""


@pytest.fixture
async def tailed(make_edge, serve, caplog):
    caplog.set_level(logging.INFO, logger="edgewise.worker")  # console.log is INFO, as with --log-level=log
    edge = make_edge(TAILED, pops=("DFW", "LHR"))
    base = await serve(edge.front_door)
    return edge, base


async def _next_event(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def test_tail_event_for_a_request(tailed) -> None:
    _, base = tailed
    async with asyncio.timeout(10), connect(base.replace("http://", "ws://") + "/cdn-cgi/edgewise/tail") as ws:
        async with httpx.AsyncClient(base_url=base) as client:
            response = await client.get("/hello?x=1", headers={"edgewise-client-location": "LHR"})
        assert response.text == "ok"
        event = await _next_event(ws)
    assert event["outcome"] == "ok"
    assert event["scriptName"] == "test-worker"
    assert event["event"]["request"]["url"] == f"{base}/hello?x=1"
    assert event["event"]["request"]["method"] == "GET"
    assert event["event"]["response"] == {"status": 200}
    assert event["edgewise"]["colo"] == "LHR"
    assert event["edgewise"]["rayId"] == response.headers["cf-ray"]
    assert [(log["level"], log["message"]) for log in event["logs"]] == [("log", ["hello"])]
    assert event["exceptions"] == []


async def test_tail_event_for_a_failing_request(tailed) -> None:
    _, base = tailed
    async with asyncio.timeout(10), connect(base.replace("http://", "ws://") + "/cdn-cgi/edgewise/tail") as ws:
        async with httpx.AsyncClient(base_url=base) as client:
            response = await client.get("/fail")
        assert response.status_code == 500
        event = await _next_event(ws)
    assert event["outcome"] == "exception"
    assert event["event"]["request"]["url"] == f"{base}/fail"
    assert event["event"]["response"] == {"status": 500}
    assert event["edgewise"]["colo"] == "DFW"
    assert [log["message"] for log in event["logs"]] == [["hello"]]
    [exception] = event["exceptions"]
    assert "ValueError: tail me" in exception["message"]


async def test_tail_event_for_a_cron_run(tailed) -> None:
    _, base = tailed
    async with asyncio.timeout(10), connect(base.replace("http://", "ws://") + "/cdn-cgi/edgewise/tail") as ws:
        async with httpx.AsyncClient(base_url=base) as client:
            response = await client.get("/__scheduled?cron=*+*+*+*+*&time=1000")
        assert response.status_code == 500  # TAILED has no scheduled handler
        event = await _next_event(ws)
    assert event["outcome"] == "exception"
    assert event["event"] == {"cron": "* * * * *", "scheduledTime": 1000}
    assert event["exceptions"][0]["name"] == "TypeError"


async def test_every_subscriber_gets_every_event(tailed) -> None:
    _, base = tailed
    url = base.replace("http://", "ws://") + "/cdn-cgi/edgewise/tail"
    async with asyncio.timeout(10), connect(url) as first, connect(url) as second:
        async with httpx.AsyncClient(base_url=base) as client:
            for path in ("/a", "/b"):
                assert (await client.get(path)).status_code == 200
        for ws in (first, second):
            urls = [(await _next_event(ws))["event"]["request"]["url"] for _ in range(2)]
            assert urls == [f"{base}/a", f"{base}/b"]


async def test_unknown_control_websocket_is_refused(tailed) -> None:
    _, base = tailed
    with pytest.raises(InvalidStatus) as refused:  # closed before accept: uvicorn answers 403
        async with asyncio.timeout(10), connect(base.replace("http://", "ws://") + "/cdn-cgi/edgewise/nope"):
            pass
    assert refused.value.response.status_code == 403
