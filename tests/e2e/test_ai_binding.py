"""env.AI end to end: a Worker calling it inside `edgewise dev` (a real process, with the backend it starts),
asked through the front door over real sockets, HTTP and WebSocket (checklist items 22-28).

Greedy answers are compared with the offline engine's and with the backend's own REST and OpenAI routes;
clients that leave mid-stream must leave no KV blocks behind in the backend.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import websockets

if TYPE_CHECKING:
    from conftest import AiDevServer, Messages

LLAMA = "@cf/meta/llama-3.1-8b-instruct"  # served by the built-in tiny-shakespeare
BGE = "@cf/baai/bge-small-en-v1.5"  # served by the built-in all-MiniLM-L6-v2
TINY = "@cf/edgewise/tiny-shakespeare"
MINILM = "@cf/sentence-transformers/all-minilm-l6-v2"
PROMPT = "Speak of the king"
MAX_TOKENS = 12
# Long enough (~1 s on two cores) that the generation is still running when the client leaves.
RUNAWAY = {"prompt": "Speak", "temperature": 0, "max_tokens": 220, "ignore_eos": True}
TIMEOUT_S = 30.0
EVENT_STREAM = re.compile(rb"\A(data: \{[^\n]*\}\n\n)+data: \[DONE\]\n\n\Z")

WRANGLER_TOML = f"""\
name = "ai-binding-e2e"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]

[ai]
binding = "AI"

[edgewise]
latency = false
pops = ["LHR", "SFO", "NRT"]

[edgewise.models]
"{LLAMA}" = "{TINY}"
"{BGE}" = "{MINILM}"
"""

ENTRY_PY = '''\
"""env.AI over HTTP and WebSocket, for the end-to-end tests.

POST /run/<model>[?options=<json>]  the body is the inputs; JSON back, or the SSE stream relayed
POST /attributes                    the inputs run on llama; the result read as attributes
GET  /models                        env.AI.models()
GET  /ws                            each text frame is inputs; tokens come back as JSON frames
A failed call is 502 {"error": str(e), "name": e.name}.
"""

import asyncio
import json
from urllib.parse import parse_qs, urlparse

from js import WebSocketPair
from workers import Response, WorkerEntrypoint

LLAMA = "@cf/meta/llama-3.1-8b-instruct"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        try:
            if url.path == "/ws":
                return self.chat_socket()
            if url.path == "/models":
                return Response.json(await self.env.AI.models())
            if url.path == "/attributes":
                return await self.attributes(await request.json())
            if url.path.startswith("/run/"):
                return await self.run(url.path.removeprefix("/run/"), await request.json(), parse_qs(url.query))
        except Exception as e:  # InferenceUpstreamError
            return Response.json({"error": str(e), "name": e.name}, status=502)
        return Response("Not found", status=404)

    async def run(self, model, inputs, query):
        if "options" in query:
            result = await self.env.AI.run(model, inputs, json.loads(query["options"][0]))
        else:
            result = await self.env.AI.run(model, inputs)
        if inputs.get("stream"):
            return Response(result, headers={"content-type": "text/event-stream"})
        return Response.json(result)

    async def attributes(self, inputs):
        r = await self.env.AI.run(LLAMA, inputs)
        return Response.json({"response": r.response, "item": r["response"], "total_tokens": r.usage.total_tokens,
                              "usage": r["usage"]})

    def chat_socket(self):
        client, server = WebSocketPair.new().object_values()
        server.accept()
        running = set()

        def on_message(event):
            task = asyncio.ensure_future(self.stream_tokens(server, json.loads(event.data)))
            running.add(task)
            task.add_done_callback(running.discard)

        def on_close(event):
            for task in list(running):
                task.cancel()  # closes the AI stream, which aborts the generation
            server.close(1000, "bye")

        server.addEventListener("message", on_message)
        server.addEventListener("close", on_close)
        return Response(None, status=101, web_socket=client)

    async def stream_tokens(self, server, inputs):
        try:
            stream = await self.env.AI.run(LLAMA, {**inputs, "stream": True})
        except Exception as e:  # InferenceUpstreamError
            server.send(json.dumps({"error": str(e), "done": True}))
            return
        async for event in sse_events(stream):
            if event.get("response"):
                server.send(json.dumps({"response": event["response"]}))
            if "usage" in event:
                server.send(json.dumps({"response": "", "usage": event["usage"], "done": True}))


async def sse_events(stream):
    """The JSON events of a Workers AI stream, up to data: [DONE]."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\\n\\n" in buffer:
            event, buffer = buffer.split(b"\\n\\n", 1)
            data = event.decode().removeprefix("data: ")
            if data == "[DONE]":
                return
            yield json.loads(data)
'''


@pytest.fixture(scope="module")
def dev(start_ai_dev: Callable[..., AiDevServer], tmp_path_factory: pytest.TempPathFactory) -> AiDevServer:
    project = tmp_path_factory.mktemp("ai-binding")
    (project / "wrangler.toml").write_text(WRANGLER_TOML)
    (project / "src").mkdir()
    (project / "src" / "entry.py").write_text(ENTRY_PY)
    return start_ai_dev(project)


@pytest.fixture(scope="module")
def http(dev: AiDevServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dev.url, timeout=TIMEOUT_S) as client:
        yield client


def user(prompt: str) -> Messages:
    return [{"role": "user", "content": prompt}]


def run(http: httpx.Client, model: str, inputs: dict[str, Any], **query: str) -> httpx.Response:
    return http.post(f"/run/{model}", json=inputs, params=query)


def sse_events(body: bytes) -> list[Any]:
    """The `data:` payloads of an event stream, JSON-decoded ("[DONE]" kept as the string)."""
    events = [event.removeprefix(b"data: ") for event in body.split(b"\n\n") if event]
    return [event.decode() if event == b"[DONE]" else json.loads(event) for event in events]


def assert_usage(usage: dict[str, Any], max_tokens: int) -> None:
    assert set(usage) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= max_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_dev_names_the_backend_but_never_prints_its_token(dev: AiDevServer) -> None:
    assert httpx.get(f"{dev.backend_url}/metrics", timeout=TIMEOUT_S).status_code == 401
    assert httpx.get(f"{dev.backend_url}/metrics", headers=dev.backend_headers(), timeout=TIMEOUT_S).is_success
    assert dev.backend_url in dev.output and dev.token not in dev.output


# ---- text generation ----------------------------------------------------------------------


def test_prompt_answers_the_greedy_text_of_the_offline_engine_and_the_backend_routes(
        dev: AiDevServer, http: httpx.Client, greedy: Callable[[Messages, int], str]) -> None:
    inputs = {"prompt": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS}
    reply = run(http, LLAMA, inputs)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    result = reply.json()
    assert set(result) >= {"response", "usage"} and isinstance(result["response"], str)
    assert_usage(result["usage"], MAX_TOKENS)
    # a prompt is one user message through the chat template
    assert result["response"] and result["response"] == greedy(user(PROMPT), MAX_TOKENS)

    rest = httpx.post(f"{dev.backend_url}/client/v4/accounts/e2e/ai/run/{LLAMA}", json=inputs,
                      headers=dev.backend_headers(), timeout=TIMEOUT_S)
    assert rest.json()["result"] == result
    openai = httpx.post(f"{dev.backend_url}/v1/chat/completions", headers=dev.backend_headers(), timeout=TIMEOUT_S,
                        json={"model": LLAMA, "messages": user(PROMPT), "temperature": 0, "max_tokens": MAX_TOKENS})
    assert openai.json()["choices"][0]["message"]["content"] == result["response"]


def test_the_worker_reads_the_result_as_attributes(http: httpx.Client) -> None:
    reply = http.post("/attributes", json={"prompt": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS})
    assert reply.status_code == 200, reply.text
    read = reply.json()
    assert read["response"] == read["item"] != ""
    assert read["total_tokens"] == read["usage"]["total_tokens"]


def test_messages_answer_the_greedy_text_of_the_conversation(
        http: httpx.Client, greedy: Callable[[Messages, int], str]) -> None:
    messages = [{"role": "system", "content": "You are a player."}, *user("Who goes there?")]
    reply = run(http, LLAMA, {"messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS})
    assert reply.status_code == 200, reply.text
    assert reply.json()["response"] == greedy(messages, MAX_TOKENS)
    assert_usage(reply.json()["usage"], MAX_TOKENS)


def test_a_stream_is_relayed_as_sse_events_ending_in_done(
        http: httpx.Client, greedy: Callable[[Messages, int], str]) -> None:
    reply = run(http, LLAMA, {"prompt": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS, "stream": True})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert EVENT_STREAM.match(reply.content), reply.content
    *events, done = sse_events(reply.content)
    assert done == "[DONE]"
    assert all(isinstance(event["response"], str) for event in events)
    assert len([event for event in events if event["response"]]) > 1  # token by token, not one blob
    assert_usage(events[-1]["usage"], MAX_TOKENS)
    assert "".join(event["response"] for event in events) == greedy(user(PROMPT), MAX_TOKENS)


def test_gateway_options_none_and_two_arguments_answer_alike(http: httpx.Client) -> None:
    inputs = {"prompt": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS}
    gateway = json.dumps({"gateway": {"id": "g", "skipCache": True}})
    answers = [run(http, LLAMA, inputs, **query) for query in ({}, {"options": "null"}, {"options": gateway})]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert answers[0].json() == answers[1].json() == answers[2].json()


# ---- embeddings ---------------------------------------------------------------------------


def test_embeddings_of_a_list_and_of_a_string(http: httpx.Client) -> None:
    pair = run(http, BGE, {"text": ["a", "b"]})
    assert pair.status_code == 200, pair.text
    assert pair.json()["shape"] == [2, 384]
    rows = pair.json()["data"]
    assert [len(row) for row in rows] == [384, 384]
    assert all(math.isclose(math.hypot(*row), 1.0, rel_tol=1e-4) for row in rows)  # L2-normalised
    assert rows[0] != rows[1]
    single = run(http, BGE, {"text": "a"}).json()
    assert single["shape"] == [1, 384]
    assert all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(single["data"][0], rows[0]))


# ---- errors -------------------------------------------------------------------------------


def test_an_unknown_model_is_inference_upstream_error_5007(http: httpx.Client) -> None:
    reply = run(http, "@cf/nobody/no-such-model", {"prompt": "hi"})
    assert reply.status_code == 502
    assert reply.json()["error"].startswith("5007: ") and "@cf/nobody/no-such-model" in reply.json()["error"]
    assert reply.json()["name"] == "InferenceUpstreamError"


def test_prompt_and_messages_together_is_bad_input_5006(http: httpx.Client) -> None:
    reply = run(http, LLAMA, {"prompt": "hi", "messages": user("hi")})
    assert reply.status_code == 502
    assert reply.json()["error"].startswith("5006: ")


# ---- models -------------------------------------------------------------------------------


def test_models_lists_the_mapped_names_and_the_builtins_with_their_tasks(http: httpx.Client) -> None:
    reply = http.get("/models")
    assert reply.status_code == 200, reply.text
    models = {model["name"]: model for model in reply.json()}
    tasks = {name: models[name]["task"]["name"] for name in (LLAMA, BGE, TINY, MINILM)}
    assert tasks == {LLAMA: "Text Generation", TINY: "Text Generation",
                     BGE: "Text Embeddings", MINILM: "Text Embeddings"}
    for model in models.values():
        assert set(model) >= {"id", "source", "name", "description", "task", "tags", "properties"}
        assert set(model["task"]) >= {"id", "name", "description"}


# ---- WebSocket ----------------------------------------------------------------------------


async def generate_over_websocket(socket: websockets.ClientConnection, inputs: dict[str, Any]) -> list[dict]:
    """Send inputs, then the frames until the one marked done."""
    await socket.send(json.dumps(inputs))
    frames = []
    while not frames or not frames[-1].get("done"):
        frames.append(json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT_S)))
    return frames


async def test_a_websocket_through_the_front_door_streams_the_greedy_tokens(
        dev: AiDevServer, greedy: Callable[[Messages, int], str]) -> None:
    inputs = {"prompt": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS}
    async with websockets.connect(f"{dev.ws_url}/ws", open_timeout=TIMEOUT_S) as socket:
        frames = await generate_over_websocket(socket, inputs)
        *tokens, done = frames
        assert len(tokens) > 1 and all(frame["response"] for frame in tokens)
        assert "".join(frame["response"] for frame in tokens) == greedy(user(PROMPT), MAX_TOKENS)
        assert_usage(done["usage"], MAX_TOKENS)
        # the connection stays open for the next inputs
        again = await generate_over_websocket(socket, inputs)
        assert again == frames


async def test_a_websocket_error_comes_back_as_a_frame(dev: AiDevServer) -> None:
    async with websockets.connect(f"{dev.ws_url}/ws", open_timeout=TIMEOUT_S) as socket:
        frames = await generate_over_websocket(socket, {"prompt": "hi", "temperature": 9})
    assert len(frames) == 1 and frames[0]["error"].startswith("5006: ")


# ---- clients that leave -------------------------------------------------------------------


def kv_blocks_used(dev: AiDevServer) -> float:
    return dev.metric("edgewise_kv_blocks_used", LLAMA)


def assert_generating(dev: AiDevServer) -> None:
    assert kv_blocks_used(dev) > 0, "the generation is not running any more as the client leaves"


def assert_aborted_and_freed(dev: AiDevServer, aborted_before: float) -> None:
    used = dev.wait_for_metric("edgewise_kv_blocks_used", LLAMA, lambda value: value == 0)
    assert used == 0, f"{used} KV blocks still in use after the client left"
    aborted = dev.wait_for_metric("edgewise_requests_aborted_total", LLAMA, lambda value: value > aborted_before)
    assert aborted == aborted_before + 1
    assert dev.metric("edgewise_requests_running", LLAMA) == 0


def test_an_sse_client_that_leaves_aborts_the_generation_and_frees_its_blocks(
        dev: AiDevServer, http: httpx.Client) -> None:
    assert kv_blocks_used(dev) == 0
    aborted = dev.metric("edgewise_requests_aborted_total", LLAMA)
    with http.stream("POST", f"/run/{LLAMA}", json={**RUNAWAY, "stream": True}) as reply:
        assert reply.status_code == 200
        chunks = reply.iter_raw()  # kept: a dropped iterator would close the stream before the check
        assert next(chunks).startswith(b"data: {")
        assert_generating(dev)
    assert_aborted_and_freed(dev, aborted)


async def test_a_websocket_client_that_leaves_aborts_the_generation_and_frees_its_blocks(
        dev: AiDevServer) -> None:
    assert kv_blocks_used(dev) == 0
    aborted = dev.metric("edgewise_requests_aborted_total", LLAMA)
    async with websockets.connect(f"{dev.ws_url}/ws", open_timeout=TIMEOUT_S) as socket:
        await socket.send(json.dumps(RUNAWAY))
        first = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT_S))
        assert first["response"] and not first.get("done")
        await asyncio.to_thread(assert_generating, dev)
    await asyncio.to_thread(assert_aborted_and_freed, dev, aborted)
