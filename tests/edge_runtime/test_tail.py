"""``/cdn-cgi/edgewise/tail``: a real WebSocket subscriber receives one event per invocation, with its logs;
pages from other origins are refused, and credentials are redacted unless the run shows secrets."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from edge_runtime.ai_backends import AiBackends
from edge_runtime.config import BackendSpec, load_config
from edge_runtime.edge import Edge

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


# ---- who may read the tail, and what it hides --------------------------------------------------


@pytest.mark.parametrize("browser", [
    {"origin": "https://evil.example"},
    {"origin": "http://localhost:3000"},  # another local dev server
    {"origin": "https://evil.example", "additional_headers": {"sec-fetch-site": "cross-site"}},
])
async def test_tail_refuses_pages_from_other_origins(tailed, browser: dict) -> None:
    _, base = tailed
    with pytest.raises(InvalidStatus) as refused:
        async with asyncio.timeout(10), connect(base.replace("http://", "ws://") + "/cdn-cgi/edgewise/tail",
                                                **browser):
            pass
    assert refused.value.response.status_code == 403
    assert b"refuses browser requests from other" in refused.value.response.body


async def test_tail_serves_a_page_of_its_own_origin(tailed) -> None:
    _, base = tailed
    async with asyncio.timeout(10), connect(base.replace("http://", "ws://") + "/cdn-cgi/edgewise/tail",
                                            origin=base) as ws:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/same-origin")).text == "ok"
        assert (await _next_event(ws))["event"]["request"]["url"] == f"{base}/same-origin"


SECRETS = {"authorization": "Bearer client-secret", "cookie": "session=cookie-secret",
           "proxy-authorization": "Basic proxy-secret", "set-cookie": "id=set-cookie-secret",
           "x-echo": "backend-secret and control-secret"}
LOGS_URL = """
    import logging
    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            logging.getLogger("edgewise.worker").info("url %s header %s", request.url, request.headers.get("x-echo"))
            raise ValueError(request.headers.get("x-echo"))
"""


async def _tailed_event(edge, serve, path: str) -> dict:
    base = await serve(edge.front_door)
    async with asyncio.timeout(10), connect(base.replace("http://", "ws://") + "/cdn-cgi/edgewise/tail") as ws:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get(path, headers=SECRETS)).status_code == 500
        return await _next_event(ws)


def _secret_edge(worker_project, show_secrets: bool) -> Edge:
    backends = AiBackends([BackendSpec("http://127.0.0.1:9", token="backend-secret")])
    return Edge(load_config(worker_project(LOGS_URL)), ai_backends=backends, control_token="control-secret",
                show_secrets=show_secrets)


async def test_tail_redacts_credentials_and_the_run_tokens(worker_project, serve, caplog) -> None:
    caplog.set_level(logging.INFO, logger="edgewise.worker")
    event = await _tailed_event(_secret_edge(worker_project, show_secrets=False), serve, "/?t=backend-secret")
    headers = event["event"]["request"]["headers"]
    for name in ("authorization", "cookie", "proxy-authorization", "set-cookie"):
        assert headers[name] == "REDACTED"
    assert headers["x-echo"] == "*** and ***"
    assert event["event"]["request"]["url"].endswith("/?t=***")
    text = json.dumps(event)
    for secret in ("client-secret", "cookie-secret", "proxy-secret", "set-cookie-secret", "backend-secret",
                   "control-secret"):
        assert secret not in text, secret
    assert "ValueError: *** and ***" in event["exceptions"][0]["message"]  # exceptions and logs too
    assert event["logs"][0]["message"] == [f"url {event['event']['request']['url']} header *** and ***"]


async def test_show_secrets_keeps_them(worker_project, serve, caplog) -> None:
    caplog.set_level(logging.INFO, logger="edgewise.worker")
    event = await _tailed_event(_secret_edge(worker_project, show_secrets=True), serve, "/?t=backend-secret")
    headers = event["event"]["request"]["headers"]
    assert headers["authorization"] == "Bearer client-secret" and headers["cookie"] == "session=cookie-secret"
    assert headers["x-echo"] == "backend-secret and control-secret"
    assert event["event"]["request"]["url"].endswith("/?t=backend-secret")
