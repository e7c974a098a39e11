"""Admission slots: every route that runs a model gives its slot back (and frees its KV blocks) on
every path: answered, refused, failed before or after the first token, or left by its client.

The routes are read from the app itself, so a new model route without examples here fails
``test_every_model_route_is_exercised``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from starlette.routing import Mount, Route, WebSocketRoute

from backend_fixtures import EMBEDDINGS, MODEL, OPTIONS, TOKEN, serving
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.engine.embedder import EmbeddingResult
from gpu_backend.server.admission import Admission
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines, TextDelta
from gpu_backend.server.errors import EngineFailedError, OverloadedError
from gpu_backend.server.schemas import EmbeddingsInput, TextGenerationInput

FAIL_AFTER_FIRST = "fail-after-first-token"  # the session that the faulty client fails mid-stream
FAIL_TEXT = "fail this embedding"
TEXT = {"max_tokens": 40, "temperature": 0, "ignore_eos": True}
LONG_TEXT = {"max_tokens": 200, "temperature": 0, "ignore_eos": True}


class FaultyEngines:
    """The real engines, with faults injected on request: a generation of session
    ``FAIL_AFTER_FIRST`` fails after its first delta, an embedding of ``FAIL_TEXT`` fails outright."""

    def __init__(self, engines: LocalEngines) -> None:
        self.engines = engines

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engines, name)

    async def generate(self, model: str, request: TextGenerationInput, request_id: str) -> AsyncIterator[TextDelta]:
        stream = self.engines.generate(model, request, request_id)
        try:
            async for delta in stream:
                yield delta
                if request.session == FAIL_AFTER_FIRST:
                    raise EngineFailedError("AiError: injected failure after the first token")
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def embed(self, model: str, request: EmbeddingsInput) -> EmbeddingResult:
        if request.texts[0] == FAIL_TEXT:
            raise EngineFailedError("AiError: injected embedding failure")
        return await self.engines.embed(model, request)


@dataclass
class Service:
    url: str
    engines: LocalEngines
    admission: Admission

    def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait until no slot is held and no KV block is used; fail naming what is still held."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.held():
            time.sleep(0.01)
        assert not self.held()

    def held(self) -> dict[str, int]:
        stats = self.engines.stats()[MODEL]
        held = {"slots": self.admission.total_in_flight(), "running": stats["num_running"],
                "waiting": stats["num_waiting"], "kv_blocks_used": stats["kv_blocks_used"]}
        return {name: count for name, count in held.items() if count}


@pytest.fixture(scope="module")
def service(checkpoints: dict[str, Path]) -> Iterator[Service]:
    engines = LocalEngines({MODEL: checkpoints["llama"], EMBEDDINGS: builtin_model_path(
        "@cf/sentence-transformers/all-minilm-l6-v2")}, **OPTIONS)
    try:
        app = create_app(FaultyEngines(engines), TOKEN, max_queue=8)  # type: ignore[arg-type]
        with serving(app) as url:
            yield Service(url, engines, app.state.service.admission)
    finally:
        engines.shutdown()


# -- which routes run a model ------------------------------------------------------------------

def model_routes(routes: list[Any], prefix: str = "") -> set[str]:
    """``"POST <path>"`` and ``"WS <path>"`` for every route that may run a model (GET routes do not)."""
    found: set[str] = set()
    for route in routes:
        if isinstance(route, Mount):
            found |= model_routes(route.routes, prefix + route.path)
        elif isinstance(route, WebSocketRoute):
            found.add(f"WS {prefix}{route.path}")
        elif isinstance(route, Route) and "POST" in (route.methods or ()):
            found.add(f"POST {prefix}{route.path}")
    return found


ACCOUNT = "/client/v4/accounts/{account_id}"
TEXT_ROUTES = {  # route -> (url path, the body of a text generation)
    "POST /v1/chat/completions": ("/v1/chat/completions",
                                  {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}),
    "POST /v1/completions": ("/v1/completions", {"model": MODEL, "prompt": "Once upon a time"}),
    f"POST {ACCOUNT}/ai/v1/chat/completions": ("/client/v4/accounts/a/ai/v1/chat/completions",
                                               {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
    f"POST {ACCOUNT}/ai/v1/completions": ("/client/v4/accounts/a/ai/v1/completions",
                                          {"model": MODEL, "prompt": "Once upon a time"}),
    f"POST {ACCOUNT}/ai/run/{{model:path}}": (f"/client/v4/accounts/a/ai/run/{MODEL}", {"prompt": "Once"}),
    "POST /v1/responses": ("/v1/responses", {"model": MODEL, "input": "Hello", "max_output_tokens": 40}),
    f"POST {ACCOUNT}/ai/v1/responses": ("/client/v4/accounts/a/ai/v1/responses",
                                        {"model": MODEL, "input": "Hi", "max_output_tokens": 40}),
}
EMBEDDING_ROUTES = {  # route -> (url path, body given the texts)
    "POST /v1/embeddings": ("/v1/embeddings", lambda texts: {"model": EMBEDDINGS, "input": texts}),
    f"POST {ACCOUNT}/ai/v1/embeddings": ("/client/v4/accounts/a/ai/v1/embeddings",
                                         lambda texts: {"model": EMBEDDINGS, "input": texts}),
    f"POST {ACCOUNT}/ai/run/{{model:path}} (embeddings)": (f"/client/v4/accounts/a/ai/run/{EMBEDDINGS}",
                                                           lambda texts: {"text": texts}),
}
WEBSOCKET_ROUTE = f"WS {ACCOUNT}/ai/run/{{model:path}}"


def test_every_model_route_is_exercised(service: Service) -> None:
    app = create_app(LocalEngines({}), TOKEN)
    exercised = {*TEXT_ROUTES, *(name.removesuffix(" (embeddings)") for name in EMBEDDING_ROUTES), WEBSOCKET_ROUTE}
    assert model_routes(app.app.routes) == exercised  # type: ignore[attr-defined]


# -- text generation over HTTP -------------------------------------------------------------------

def _post(service: Service, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(service.url + path, json=body, headers={"authorization": f"Bearer {TOKEN}", **headers},
                      timeout=30)


@pytest.mark.parametrize("route", sorted(TEXT_ROUTES))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_answered_refused_and_failed_text_requests_give_their_slot_back(service: Service, route: str,
                                                                        stream: bool) -> None:
    path, body = TEXT_ROUTES[route]
    body = {**body, **TEXT, "stream": stream}
    answered = _post(service, path, body)
    assert answered.status_code == 200 and "injected" not in answered.text and '"error":{' not in answered.text
    long_input = ({"prompt": "word " * 2000} if "prompt" in body else {"input": "word " * 2000} if "input" in body
                  else {"messages": [{"role": "user", "content": "word " * 2000}]})
    too_long = _post(service, path, {**body, **long_input})
    assert too_long.status_code in (400, 413)  # refused by the engine after admission
    failed = _post(service, path, body, **{"x-session-affinity": FAIL_AFTER_FIRST})
    if stream:  # the stream had begun: the failure is its last event
        assert failed.status_code == 200 and '"error"' in failed.text and "injected failure" in failed.text
    else:
        assert failed.status_code == 500 and "injected failure" in failed.text
    service.wait_idle()


@pytest.mark.parametrize("route", sorted(name for name in TEXT_ROUTES if "/v1/" in name))
def test_a_bad_stream_option_gives_the_slot_back(service: Service, route: str) -> None:
    path, body = TEXT_ROUTES[route]
    for _ in range(service.admission.limit(MODEL) + 2):  # more than the model admits: a leak would show as 429
        reply = _post(service, path, {**body, **TEXT, "stream": True, "stream_options": "yes"})
        assert reply.status_code == 400
    assert _post(service, path, {**body, **TEXT}).status_code == 200
    service.wait_idle()


@pytest.mark.parametrize("route", sorted(TEXT_ROUTES))
def test_a_stream_whose_client_leaves_after_the_first_token_gives_everything_back(service: Service,
                                                                                   route: str) -> None:
    path, body = TEXT_ROUTES[route]
    with httpx.stream("POST", service.url + path, json={**body, **LONG_TEXT, "stream": True},
                      headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as reply:
        assert reply.status_code == 200
        next(reply.iter_raw())
    service.wait_idle()


@pytest.mark.parametrize("route", sorted(TEXT_ROUTES))
def test_a_client_that_leaves_before_its_answer_gives_everything_back(service: Service, route: str) -> None:
    path, body = TEXT_ROUTES[route]
    _send_and_leave(service, path, {**body, **LONG_TEXT}, lambda: service.admission.total_in_flight() > 0)
    service.wait_idle()


def _send_and_leave(service: Service, path: str, body: dict[str, Any], until: Any) -> None:
    """Send the request on a raw socket and close it once ``until()`` holds (or at once if it never does)."""
    host, port = service.url.removeprefix("http://").split(":")
    raw = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: "
                     f"application/json\r\ncontent-length: {len(raw)}\r\n\r\n".encode() + raw)
        deadline = time.monotonic() + 5
        while not until() and time.monotonic() < deadline:
            time.sleep(0.002)


# -- embeddings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("route", sorted(EMBEDDING_ROUTES))
def test_embeddings_give_their_slot_back_answered_or_failed(service: Service, route: str) -> None:
    path, body = EMBEDDING_ROUTES[route]
    assert _post(service, path, body(["a sentence"])).status_code == 200
    failed = _post(service, path, body([FAIL_TEXT]))
    assert failed.status_code == 500 and "injected embedding failure" in failed.text
    assert _post(service, path, body([""])).status_code == 400
    service.wait_idle()


def test_an_embedding_whose_client_leaves_stops_at_its_next_batch(service: Service,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = service.engines._embedders[EMBEDDINGS]
    batches: list[int] = []
    embed_batch = embedder._embed_batch

    def counted(texts: list[str], pooling: str) -> Any:
        batches.append(len(texts))
        return embed_batch(texts, pooling)

    monkeypatch.setattr(embedder, "_embed_batch", counted)
    path, body = EMBEDDING_ROUTES["POST /v1/embeddings"]
    _send_and_leave(service, path, body(["word " * 300] * 100), lambda: bool(batches))  # 4 batches of up to 32
    deadline = time.monotonic() + 30
    while embedder._lock.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not embedder._lock.locked() and len(batches) < 4
    service.wait_idle()
    assert _post(service, path, body(["still serving"])).status_code == 200


async def test_embeddings_past_the_queue_get_429_with_retry_after(checkpoints: dict[str, Path]) -> None:
    engines = LocalEngines({EMBEDDINGS: builtin_model_path("@cf/sentence-transformers/all-minilm-l6-v2")},
                           **OPTIONS)
    try:
        app = create_app(engines, TOKEN, max_queue=1)  # one running, one waiting
        with serving(app) as url:
            async with httpx.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
                big = {"model": EMBEDDINGS, "input": ["word " * 300] * 64}
                replies = await asyncio.gather(*(client.post(f"{url}/v1/embeddings", json=big) for _ in range(4)),
                                               client.post(f"{url}/client/v4/accounts/a/ai/run/{EMBEDDINGS}",
                                                           json={"text": ["hi"]}))
        statuses = sorted(reply.status_code for reply in replies)
        assert statuses.count(200) >= 2 and 429 in statuses
        refused = next(reply for reply in replies if reply.status_code == 429)
        assert refused.headers["retry-after"] == str(1)
        code = refused.json()["error"]["code"] if "error" in refused.json() else refused.json()["errors"][0]["code"]
        assert code == OverloadedError.code == 3040
        assert app.state.service.admission.total_in_flight() == 0
    finally:
        engines.shutdown()


# -- the WebSocket route -------------------------------------------------------------------------

def _ws_url(service: Service) -> str:
    return f"{service.url.replace('http', 'ws', 1)}/client/v4/accounts/a/ai/run/{MODEL}"


async def test_websocket_generations_give_everything_back_on_every_path(service: Service) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with websockets.connect(_ws_url(service), additional_headers=headers) as socket_:
        await socket_.send(json.dumps({"prompt": "Once", **TEXT}))
        frames = [json.loads(await socket_.recv())]
        while not frames[-1].get("done"):
            frames.append(json.loads(await socket_.recv()))
        assert "usage" in frames[-1]
        await socket_.send(json.dumps({"prompt": "word " * 2000}))  # refused after admission
        assert "error" in json.loads(await socket_.recv())
        await socket_.send(json.dumps({"prompt": "Once", **LONG_TEXT}))
        assert "response" in json.loads(await socket_.recv())
    await asyncio.to_thread(service.wait_idle)  # closed mid-stream


async def test_websocket_clients_that_leave_at_once_leave_no_generation_behind(service: Service) -> None:
    """Each client sends its inputs and closes at once; none of them may run on or hold blocks."""
    headers = {"authorization": f"Bearer {TOKEN}"}

    async def send_and_leave() -> None:
        async with websockets.connect(_ws_url(service), additional_headers=headers) as socket_:
            await socket_.send(json.dumps({"prompt": "Once upon a time", **LONG_TEXT}))

    for _ in range(10):
        await asyncio.gather(*(send_and_leave() for _ in range(20)))
    await asyncio.to_thread(service.wait_idle)
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        reply = await client.post(f"{service.url}/client/v4/accounts/a/ai/run/{MODEL}",
                                  json={"prompt": "Once", "max_tokens": 3, "ignore_eos": True})
    assert reply.status_code == 200
