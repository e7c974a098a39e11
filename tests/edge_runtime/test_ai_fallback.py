"""A Worker written for Cloudflare runs unchanged: env.AI.run on Workers AI names that no config maps is
answered by the built-in models of a real local backend; other tasks raise 5007 saying why."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from edge_runtime.config import load_config
from edge_runtime.edge import Edge
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.server.background import local_backend

TINY = "@cf/edgewise/tiny-shakespeare"
MINILM = "@cf/sentence-transformers/all-minilm-l6-v2"
WORKER = """
    from workers import Response, WorkerEntrypoint

    GREEDY = {"temperature": 0, "max_tokens": 6}

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            path = request.url.rsplit("/", 1)[1]
            if path == "llama":
                result = await self.env.AI.run("@cf/meta/llama-3.3-70b-instruct-fp8-fast", {"prompt": "ROMEO:", **GREEDY})
                return Response.json({"response": result.response})
            if path == "builtin":
                result = await self.env.AI.run("@cf/edgewise/tiny-shakespeare", {"prompt": "ROMEO:", **GREEDY})
                return Response.json({"response": result.response})
            if path == "embed":
                result = await self.env.AI.run("@cf/baai/bge-base-en-v1.5", {"text": ["a cat", "a dog"]})
                return Response.json({"shape": result.shape, "first": result.data[0][:4]})
            if path == "responses":
                result = await self.env.AI.run("@cf/openai/gpt-oss-120b",
                                               {"instructions": "Answer in verse.", "input": "What is love?", **GREEDY})
                message = result.output[0]
                return Response.json({"object": result.object, "model": result.model, "type": message.type,
                                      "part": message.content[0].type, "text": message.content[0].text,
                                      "output_tokens": result.usage.output_tokens})
            try:
                await self.env.AI.run("@cf/black-forest-labs/flux-1-schnell", {"prompt": "a cat"})
            except Exception as error:
                return Response(f"{type(error).__name__}: {error}", status=500)
            return Response("no error")
"""


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[str, str]]:
    models = {TINY: builtin_model_path(TINY), MINILM: builtin_model_path(MINILM)}
    with local_backend(models, device="cpu", dtype="float32", num_kv_blocks=64, max_model_len=256) as served:
        yield served


@pytest.fixture
async def client(backend: tuple[str, str], tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    url, token = backend
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text(textwrap.dedent(WORKER))
    (tmp_path / "wrangler.toml").write_text(
        'name = "cf-names"\nmain = "src/entry.py"\ncompatibility_date = "2025-11-02"\n'
        'compatibility_flags = ["python_workers"]\n[ai]\nbinding = "AI"\n[edgewise]\npops = ["LHR"]\n'
        f'latency = false\n[[edgewise.backends]]\nurl = "{url}"\ntoken = "{token}"\n')
    edge = Edge(load_config(tmp_path))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url="http://edge.test",
                                     timeout=60) as opened:
            yield opened
    finally:
        await edge.aclose()


async def test_a_cloudflare_text_model_name_is_answered_by_the_builtin(client: httpx.AsyncClient) -> None:
    unmapped, builtin = await client.get("/llama"), await client.get("/builtin")
    assert unmapped.status_code == 200, unmapped.text
    assert unmapped.json() == builtin.json() and builtin.json()["response"]


async def test_a_cloudflare_embeddings_name_is_answered_by_the_builtin_minilm(client: httpx.AsyncClient) -> None:
    reply = await client.get("/embed")
    assert reply.status_code == 200, reply.text
    assert reply.json()["shape"] == [2, 384] and len(reply.json()["first"]) == 4


async def test_responses_style_input_gets_a_responses_style_answer(client: httpx.AsyncClient) -> None:
    reply = await client.get("/responses")
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert (answer["object"], answer["model"], answer["type"], answer["part"]) == \
        ("response", "@cf/openai/gpt-oss-120b", "message", "output_text")
    assert answer["text"] and answer["output_tokens"] == 6


async def test_an_image_model_raises_5007_saying_edgewise_has_no_model_for_it(client: httpx.AsyncClient) -> None:
    reply = await client.get("/flux")
    assert reply.status_code == 500
    assert reply.text.startswith("InferenceUpstreamError: 5007: No such model @cf/black-forest-labs/flux-1-schnell")
    assert "edgewise has no local model for Text-to-Image" in reply.text and "[edgewise.models]" in reply.text
