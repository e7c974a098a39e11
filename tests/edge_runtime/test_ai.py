"""env.AI against a real HTTP peer that speaks the backend's wire contract: results, streams relayed
unbuffered and closed early, errors as InferenceUpstreamError, options, nearest backend and fallback.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from workers import JsDict, Response as WorkerResponse

from edge_runtime.ai import Ai, AiInternalError, InferenceUpstreamError
from edge_runtime.ai_backends import AiBackends, AiTimeouts
from edge_runtime.catalog import get_location
from edge_runtime.config import BackendSpec, load_config
from edge_runtime.edge import Edge

TOKEN = "peer-token"
ECHO = "@cf/test/echo"
MODELS = [{"id": f"id-{i}", "source": 1, "name": name, "description": "d", "tags": [], "properties": [],
           "task": {"id": "t", "name": "Text Generation", "description": "d"}}
          for i, name in enumerate([ECHO, "@cf/test/stream"])]  # fmt: skip


def envelope(result: Any) -> dict[str, Any]:
    return {"result": result, "success": True, "errors": [], "messages": []}


def error_envelope(status: int, code: int, message: str) -> JSONResponse:
    body = {"result": None, "success": False, "errors": [{"code": code, "message": message}], "messages": []}
    return JSONResponse(body, status_code=status)


# models whose stream drops the connection mid-way, and the media type they stream
DROPPED = {"@cf/test/drop": "text/event-stream", "@cf/test/drop-mid-event": "text/event-stream",
           "@cf/test/drop-binary": "application/octet-stream"}


def sse(event: dict[str, Any] | str) -> bytes:
    return f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode()


class Peer:
    """A stand-in backend (the wire contract of `edgewise backend serve`), with hooks for the tests."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.release = asyncio.Event()  # the held stream goes on once set
        self.stream_closed = asyncio.Event()  # a stream's generator ended or was cancelled
        self.app = Starlette(routes=[
            Route("/client/v4/accounts/{account}/ai/run/{model:path}", self.run, methods=["POST"]),
            Route("/client/v4/accounts/{account}/ai/models/search", self.models),
        ])  # fmt: skip

    async def run(self, request: Request) -> Response:
        self.calls += 1
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return error_envelope(403, 10000, "Authentication error")
        model, inputs = request.path_params["model"], json.loads(await request.body())
        if model == "@cf/test/plain-error":
            return PlainTextResponse("the backend fell over", status_code=500)
        if model == "@cf/test/slow":
            await asyncio.sleep(0.5)
        if model == "@cf/test/embed":
            return JSONResponse(envelope({"shape": [1, 3], "data": [[0.1, 0.2, 0.3]]}))
        if model in DROPPED:
            return StreamingResponse(self._dropped(model), media_type=DROPPED[model])
        if model not in (ECHO, "@cf/test/stream", "@cf/test/forever"):
            return error_envelope(400, 5007, f"No such model {model} or task")
        if inputs.get("stream"):
            return StreamingResponse(self._events(model), media_type="text/event-stream")
        headers = {k: v for k, v in request.headers.items() if k.startswith("x-")}
        result = {"response": f"{self.name} says hi", "inputs": inputs, "headers": headers,
                  "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}
        return JSONResponse(envelope(result), headers={"cf-ai-req-id": "req-1"})

    async def _events(self, model: str) -> AsyncIterator[bytes]:
        try:
            yield sse({"response": "Hello"})
            if model == "@cf/test/forever":
                for i in range(500):
                    await asyncio.sleep(0.02)
                    yield sse({"response": f" {i}"})
            await self.release.wait()
            yield sse({"response": " there"})
            yield sse({"response": "", "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
            yield sse("[DONE]")
        finally:
            self.stream_closed.set()

    async def _dropped(self, model: str) -> AsyncIterator[bytes]:
        """Two events, then the connection drops (uvicorn closes it without the last chunk), as a backend
        killed mid-stream does; mid-event, the second event is cut in half."""
        yield sse({"response": "Hello"})
        await asyncio.sleep(0.05)
        second = sse({"response": " there"})
        yield second[:10] if model == "@cf/test/drop-mid-event" else second
        await asyncio.sleep(0.05)
        raise ConnectionAbortedError("the backend died")

    async def models(self, request: Request) -> Response:
        page, per_page = int(request.query_params.get("page", 1)), int(request.query_params.get("per_page", 50))
        return JSONResponse(envelope(MODELS[(page - 1) * per_page: page * per_page]))


@pytest.fixture
async def peers(serve: Callable[[Any], Any]) -> Callable[..., Any]:
    """`await peers("a", "b")` -> [(Peer, url), ...], each on its own uvicorn socket."""

    async def start(*names: str) -> list[tuple[Peer, str]]:
        started = []
        for name in names:
            peer = Peer(name)
            started.append((peer, await serve(peer.app)))
        return started

    return start


@pytest.fixture
async def make_ai() -> AsyncIterator[Callable[..., Ai]]:
    """`make_ai([BackendSpec, ...], colo="LHR", timeouts=...)`; connections closed at the end."""
    pools: list[AiBackends] = []

    def make(specs: list[BackendSpec], colo: str = "LHR", timeouts: AiTimeouts = AiTimeouts()) -> Ai:
        pools.append(AiBackends(specs, timeouts))
        return Ai(pools[-1], get_location(colo))

    yield make
    for pool in pools:
        await pool.aclose()


@pytest.fixture
async def ai(peers: Callable[..., Any], make_ai: Callable[..., Ai]) -> tuple[Ai, Peer]:
    [(peer, url)] = await peers("peer")
    return make_ai([BackendSpec(url, token=TOKEN)]), peer


def refused_url() -> str:
    """A port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# ---- results ----------------------------------------------------------------------------


async def test_json_result_is_a_jsdict_with_attribute_access(ai) -> None:
    binding, _ = ai
    result = await binding.run(ECHO, {"prompt": "hi"})
    assert isinstance(result, JsDict)
    assert result.response == result["response"] == "peer says hi"
    assert result.usage.total_tokens == 4 and result.inputs == {"prompt": "hi"}
    assert binding.lastRequestId == "req-1" and binding.lastRequestHttpStatusCode == 200


async def test_messages_and_embeddings(ai) -> None:
    binding, _ = ai
    chat = await binding.run(ECHO, {"messages": [{"role": "user", "content": "hi"}]})
    assert chat.inputs.messages[0].content == "hi"
    embedded = await binding.run("@cf/test/embed", {"text": ["a"]})
    assert embedded.shape == [1, 3] and embedded.data == [[0.1, 0.2, 0.3]]


async def test_stream_is_relayed_chunk_by_chunk(ai) -> None:
    binding, peer = ai
    stream = await binding.run("@cf/test/stream", {"prompt": "hi", "stream": True})
    chunks = aiter(stream)
    # the peer holds the rest of the stream until released: the first event must arrive on its own
    first = await asyncio.wait_for(anext(chunks), 5)
    assert first == sse({"response": "Hello"})
    peer.release.set()
    rest = b"".join([chunk async for chunk in chunks])
    assert rest.startswith(sse({"response": " there"})) and rest.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' in rest


async def test_stream_works_as_a_response_body(ai) -> None:
    binding, peer = ai
    peer.release.set()
    stream = await binding.run("@cf/test/stream", {"prompt": "hi", "stream": True})
    response = WorkerResponse(stream, headers={"content-type": "text/event-stream"})
    text = await response.text()
    assert text.startswith('data: {"response": "Hello"}\n\n') and text.endswith("data: [DONE]\n\n")


async def test_stream_left_early_closes_the_upstream(ai) -> None:
    binding, peer = ai
    stream = await binding.run("@cf/test/forever", {"prompt": "hi", "stream": True})
    async for chunk in stream:
        assert chunk == sse({"response": "Hello"})
        break
    del stream, chunk
    gc.collect()
    await asyncio.wait_for(peer.stream_closed.wait(), 5)


async def test_stream_never_read_closes_the_upstream(ai) -> None:
    binding, peer = ai
    stream = await binding.run("@cf/test/forever", {"prompt": "hi", "stream": True})
    del stream
    gc.collect()
    await asyncio.wait_for(peer.stream_closed.wait(), 5)


# ---- errors -----------------------------------------------------------------------------


async def test_error_envelope_raises_inference_upstream_error(ai) -> None:
    binding, _ = ai
    with pytest.raises(InferenceUpstreamError) as caught:
        await binding.run("@cf/nope/unknown", {"prompt": "hi"})
    error = caught.value
    assert str(error) == error.message == "5007: No such model @cf/nope/unknown or task"
    assert error.name == "InferenceUpstreamError" and isinstance(error, Exception)
    assert binding.lastRequestHttpStatusCode == 400


async def test_non_envelope_error_keeps_the_raw_text(ai) -> None:
    binding, _ = ai
    with pytest.raises(InferenceUpstreamError, match="^the backend fell over$"):
        await binding.run("@cf/test/plain-error", {"prompt": "hi"})


async def test_wrong_token_is_an_authentication_error(peers, make_ai) -> None:
    [(_, url)] = await peers("peer")
    with pytest.raises(InferenceUpstreamError, match="^10000: Authentication error$"):
        await make_ai([BackendSpec(url, token="wrong")]).run(ECHO, {"prompt": "hi"})


async def test_unreachable_backend(make_ai) -> None:
    url = refused_url()
    with pytest.raises(InferenceUpstreamError, match=f"AI backend at {url}.* is unreachable"):
        await make_ai([BackendSpec(url, token=TOKEN)]).run(ECHO, {"prompt": "hi"})


async def test_no_backend_configured(make_ai) -> None:
    with pytest.raises(InferenceUpstreamError, match=r"No AI backend is configured.*edgewise\.backends"):
        await make_ai([]).run(ECHO, {"prompt": "hi"})


async def test_read_timeout_is_bounded(peers, make_ai) -> None:
    [(_, url)] = await peers("peer")
    binding = make_ai([BackendSpec(url, token=TOKEN)], timeouts=AiTimeouts(read_s=0.1))
    with pytest.raises(InferenceUpstreamError, match="^3007: .*did not answer within 0.1 s"):
        await binding.run("@cf/test/slow", {"prompt": "hi"})


async def test_stream_silence_is_bounded(peers, make_ai) -> None:
    [(peer, url)] = await peers("peer")
    binding = make_ai([BackendSpec(url, token=TOKEN)], timeouts=AiTimeouts(read_s=0.2))
    chunks = [chunk async for chunk in await binding.run("@cf/test/stream", {"prompt": "hi", "stream": True})]
    # the peer holds the rest until released, which never comes: the stream ends with an error event
    assert chunks[0] == sse({"response": "Hello"})
    [error] = [json.loads(chunk.removeprefix(b"data: ")) for chunk in chunks[1:]]
    assert error["error"]["code"] == 3007 and "went silent mid-stream" in error["error"]["message"]
    await asyncio.wait_for(peer.stream_closed.wait(), 5)


def _events(body: bytes) -> list[Any]:
    assert body.endswith(b"\n\n"), body
    return [json.loads(event.removeprefix(b"data: ")) for event in body.split(b"\n\n")[:-1]]


@pytest.mark.parametrize("model, relayed", [("@cf/test/drop", ["Hello", " there"]),
                                            ("@cf/test/drop-mid-event", ["Hello"])])  # no half event
async def test_backend_dying_mid_stream_ends_it_with_an_error_event(ai, model: str, relayed: list[str]) -> None:
    binding, _ = ai
    body = b"".join([chunk async for chunk in await binding.run(model, {"prompt": "hi", "stream": True})])
    *texts, error = _events(body)
    assert [text["response"] for text in texts] == relayed
    assert error["error"]["code"] == 3043 and "broke" in error["error"]["message"]


async def test_backend_dying_mid_way_through_other_output_raises(ai) -> None:
    binding, _ = ai
    chunks = aiter(await binding.run("@cf/test/drop-binary", {"prompt": "hi", "stream": True}))
    assert await anext(chunks) == sse({"response": "Hello"})
    with pytest.raises(InferenceUpstreamError, match="^3043: The AI stream from .* broke"):
        async for _ in chunks:
            pass


async def test_bad_arguments_are_type_errors(ai) -> None:
    binding, _ = ai
    with pytest.raises(TypeError, match="inputs must be a dict"):
        await binding.run(ECHO, "hi")
    with pytest.raises(TypeError, match="cannot be sent over RPC"):
        await binding.run(ECHO, {"prompt": ("a", "b")})
    with pytest.raises(TypeError, match="options must be a dict"):
        await binding.run(ECHO, {"prompt": "hi"}, "fast")


# ---- options ----------------------------------------------------------------------------


async def test_options_none_two_args_and_gateway_are_accepted(ai, caplog) -> None:
    binding, _ = ai
    caplog.set_level(logging.DEBUG, logger="edgewise.ai")
    assert (await binding.run(ECHO, {"prompt": "hi"}, None)).response == "peer says hi"
    result = await binding.run(ECHO, {"prompt": "hi"}, {"gateway": {"id": "g", "skipCache": True}, "other": 1})
    assert result.response == "peer says hi"
    assert "gateway" in caplog.text


async def test_extra_headers_are_forwarded_but_not_the_token(ai) -> None:
    binding, _ = ai
    options = {"extraHeaders": {"X-Session": "abc", "Authorization": "Bearer stolen"}}
    result = await binding.run(ECHO, {"prompt": "hi"}, options)
    assert result.headers == {"x-session": "abc"}


async def test_return_raw_response(ai) -> None:
    binding, peer = ai
    raw = await binding.run(ECHO, {"prompt": "hi"}, {"returnRawResponse": True})
    assert isinstance(raw, WorkerResponse) and raw.status == 200
    assert (await raw.json()).response == "peer says hi"  # un-enveloped, as the binding's reply is
    failed = await binding.run("@cf/nope/x", {"prompt": "hi"}, {"returnRawResponse": True})
    assert failed.status == 400 and (await failed.json()).errors[0].code == 5007
    peer.release.set()
    streamed = await binding.run("@cf/test/stream", {"prompt": "hi", "stream": True}, {"returnRawResponse": True})
    assert streamed.headers.get("content-type").startswith("text/event-stream")
    assert (await streamed.text()).endswith("data: [DONE]\n\n")


async def test_websocket_option_is_refused(ai) -> None:
    with pytest.raises(TypeError, match="websocket"):
        await ai[0].run(ECHO, {"prompt": "hi"}, {"websocket": True})


# ---- models() ---------------------------------------------------------------------------


async def test_models_lists_the_catalog(ai) -> None:
    binding, _ = ai
    models = await binding.models()
    assert [model.name for model in models] == [ECHO, "@cf/test/stream"]
    assert models[0].task.name == "Text Generation" and set(models[0]) == set(MODELS[0])
    assert [model.name for model in await binding.models({"page": 2, "per_page": 1})] == ["@cf/test/stream"]
    assert await binding.models({"page": 3, "per_page": 1}) == []


async def test_models_error_is_an_ai_internal_error(make_ai) -> None:
    with pytest.raises(AiInternalError, match="unreachable") as caught:
        await make_ai([BackendSpec(refused_url())]).models()
    assert caught.value.name == "AiInternalError"


# ---- which backend ----------------------------------------------------------------------


def test_nearest_first_by_great_circle_distance() -> None:
    sin, lhr, here = (BackendSpec("http://sin:1", "SIN"), BackendSpec("http://lhr:1", "51.5,-0.1"),
                      BackendSpec("http://here:1"))  # fmt: skip
    backends = AiBackends([sin, lhr])
    assert backends.nearest_first(get_location("FRA")) == (lhr, sin)
    assert backends.nearest_first(get_location("NRT")) == (sin, lhr)
    # no location: next to every PoP
    assert AiBackends([sin, here, lhr]).nearest_first(get_location("FRA")) == (here, lhr, sin)


async def test_each_pop_calls_its_nearest_backend(peers, make_ai) -> None:
    (_, lhr_url), (_, sin_url) = await peers("lhr", "sin")
    specs = [BackendSpec(sin_url, "SIN", TOKEN), BackendSpec(lhr_url, "GB", TOKEN)]
    assert (await make_ai(specs, colo="FRA").run(ECHO, {"prompt": "hi"})).response == "lhr says hi"
    assert (await make_ai(specs, colo="NRT").run(ECHO, {"prompt": "hi"})).response == "sin says hi"


async def test_falls_back_when_the_nearest_refuses_to_connect(peers, make_ai, caplog) -> None:
    [(peer, url)] = await peers("far")
    down = refused_url()
    binding = make_ai([BackendSpec(down, "LHR", TOKEN), BackendSpec(url, "SIN", TOKEN)], colo="FRA")
    assert (await binding.run(ECHO, {"prompt": "hi"})).response == "far says hi"
    assert f"AI backend {down} is unreachable" in caplog.text and peer.calls == 1


async def test_no_fallback_once_the_request_was_sent(peers, make_ai) -> None:
    [(peer, url)] = await peers("far")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the request is on its way; the connection dies before any reply
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    near = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        binding = make_ai([BackendSpec(near, "LHR", TOKEN), BackendSpec(url, "SIN", TOKEN)], colo="FRA")
        with pytest.raises(InferenceUpstreamError, match=f"AI backend at {near} failed"):
            await binding.run(ECHO, {"prompt": "hi"})
    assert peer.calls == 0


# ---- through the edge: env.AI in a Worker -----------------------------------------------

WORKER = """
    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            if request.url.endswith("/stream"):
                stream = await self.env.AI.run("@cf/test/forever", {"prompt": "hi", "stream": True})
                return Response(stream, headers={"content-type": "text/event-stream"})
            if request.url.endswith("/dropped"):
                stream = await self.env.AI.run("@cf/test/drop", {"prompt": "hi", "stream": True})
                return Response(stream, headers={"content-type": "text/event-stream"})
            if request.url.endswith("/dropped-read"):
                stream = await self.env.AI.run("@cf/test/drop", {"prompt": "hi", "stream": True})
                return Response.json([chunk.decode() async for chunk in stream])
            result = await self.env.AI.run("@cf/test/echo", {"prompt": "hi"})
            return Response(f"{request.cf.colo}: {result.response}")
"""


def ai_project(root: Path, backends: list[tuple[str, str]]) -> Path:
    tables = "".join(f'[[edgewise.backends]]\nurl = "{url}"\nlocation = "{where}"\ntoken = "{TOKEN}"\n'
                     for url, where in backends)  # fmt: skip
    (root / "src").mkdir(parents=True)
    (root / "src" / "entry.py").write_text(textwrap.dedent(WORKER))
    (root / "wrangler.toml").write_text(
        'name = "ai-worker"\nmain = "src/entry.py"\ncompatibility_date = "2025-11-02"\n'
        'compatibility_flags = ["python_workers"]\n[ai]\nbinding = "AI"\n'
        f'[edgewise]\npops = ["LHR", "SIN"]\nlatency = false\n{tables}'
    )
    return root


@pytest.fixture
async def ai_edge(tmp_path: Path, peers, serve) -> AsyncIterator[tuple[Edge, str, list[Peer]]]:
    (lhr, lhr_url), (sin, sin_url) = await peers("lhr", "sin")
    edge = Edge(load_config(ai_project(tmp_path, [(lhr_url, "LHR"), (sin_url, "SIN")])))
    yield edge, await serve(edge.front_door), [lhr, sin]
    await edge.aclose()


async def test_worker_env_ai_per_pop_and_after_reload(ai_edge) -> None:
    edge, base, _ = ai_edge
    async with httpx.AsyncClient(base_url=base) as client:
        for colo in ("LHR", "SIN"):
            reply = await client.get("/", headers={"edgewise-client-location": colo})
            assert reply.text == f"{colo}: {colo.lower()} says hi"
        edge.reload()
        reply = await client.get("/", headers={"edgewise-client-location": "SIN"})
        assert reply.text == "SIN: sin says hi"
    assert edge.pop("LHR").env.AI.backends[0].location == "LHR"


async def test_client_disconnect_closes_the_backend_stream(ai_edge) -> None:
    _, base, (lhr, _) = ai_edge
    async with httpx.AsyncClient(base_url=base) as client:
        async with client.stream("GET", "/stream", headers={"edgewise-client-location": "LHR"}) as reply:
            assert reply.headers["content-type"] == "text/event-stream"
            first = await anext(reply.aiter_raw())
            assert first.startswith(b'data: {"response": "Hello"}')
    await asyncio.wait_for(lhr.stream_closed.wait(), 5)


async def test_backend_dying_mid_stream_reaches_the_client_as_an_error_event(ai_edge) -> None:
    _, base, _ = ai_edge
    async with httpx.AsyncClient(base_url=base) as client:
        reply = await client.get("/dropped", headers={"edgewise-client-location": "LHR"})  # read to a clean end
    assert reply.status_code == 200 and reply.headers["transfer-encoding"] == "chunked"
    *texts, error = _events(reply.content)
    assert [text["response"] for text in texts] == ["Hello", " there"]
    assert error["error"]["code"] == 3043


async def test_a_worker_reading_the_stream_sees_the_error_event(ai_edge) -> None:
    _, base, _ = ai_edge
    async with httpx.AsyncClient(base_url=base) as client:
        reply = await client.get("/dropped-read", headers={"edgewise-client-location": "LHR"})
    assert reply.status_code == 200, reply.text
    assert _events("".join(reply.json()).encode())[-1]["error"]["code"] == 3043
