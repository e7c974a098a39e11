"""`env.AI.run(model, {"requests": [...]}, {"queueRequest": True})` and `env.AI.run(model, {"request_id": id})`
against a real backend that keeps batches: queueing answers `{status: "queued", request_id, model}` at once,
polling answers the status, then each item's result as a single `env.AI.run` of it answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from edge_runtime.ai import Ai, InferenceUpstreamError, _query_options
from edge_runtime.ai_backends import AiBackends
from edge_runtime.catalog import get_location
from edge_runtime.config import BackendSpec
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.server.api import create_app
from gpu_backend.server.background import serving
from gpu_backend.server.batches import BatchConfig
from gpu_backend.server.client import LocalEngines

TINY = "@cf/edgewise/tiny-shakespeare"
EMBEDDINGS = "@cf/baai/bge-small-en-v1.5"
MINILM = "@cf/sentence-transformers/all-minilm-l6-v2"
TOKEN = "batch-token"
DONE_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def backend_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    engines = LocalEngines({TINY: builtin_model_path(TINY), EMBEDDINGS: builtin_model_path(MINILM)},
                           device="cpu", dtype="float32", num_kv_blocks=64)
    try:
        app = create_app(engines, TOKEN, max_queue=4, batches=BatchConfig(tmp_path_factory.mktemp("batches")))
        with serving(app) as url:
            yield url
    finally:
        engines.shutdown()


@pytest.fixture
async def ai(backend_url: str) -> AsyncIterator[Ai]:
    pool = AiBackends([BackendSpec(backend_url, token=TOKEN)])
    try:
        yield Ai(pool, get_location("LHR"))
    finally:
        await pool.aclose()


def plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


async def wait_done(ai: Ai, model: str, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + DONE_WITHIN_S
    while True:
        polled = plain(await ai.run(model, {"request_id": request_id}))
        if "responses" in polled:
            return polled
        assert polled == {"status": polled["status"], "request_id": request_id, "model": model}
        assert polled["status"] in ("queued", "running") and time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_a_queued_text_batch_answers_each_item_as_a_single_run(ai: Ai) -> None:
    requests = [{"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0, "external_reference": "romeo"},
                {"messages": [{"role": "user", "content": "JULIET:"}], "max_tokens": 4, "temperature": 0}]
    queued = await ai.run(TINY, {"requests": requests}, {"queueRequest": True})
    assert queued.status == "queued" and queued.model == TINY and queued.request_id
    assert ai.lastRequestHttpStatusCode == 200
    done = await wait_done(ai, TINY, queued.request_id)
    singles = [plain(await ai.run(TINY, {k: v for k, v in item.items() if k != "external_reference"}))
               for item in requests]
    assert done["responses"] == [{"id": 0, "result": singles[0], "success": True, "external_reference": "romeo"},
                                 {"id": 1, "result": singles[1], "success": True, "external_reference": None}]
    tokens = sum(single["usage"]["total_tokens"] for single in singles)
    assert done["usage"]["total_tokens"] == tokens


async def test_a_queued_embeddings_batch_answers_vectors(ai: Ai) -> None:
    queued = await ai.run(EMBEDDINGS, {"requests": [{"text": "a story about a llama"}, {"text": ["one", "two"]}]},
                          {"queueRequest": True})
    done = await wait_done(ai, EMBEDDINGS, queued.request_id)
    assert [response["result"]["shape"] for response in done["responses"]] == [[1, 384], [2, 384]]
    single = plain(await ai.run(EMBEDDINGS, {"text": "a story about a llama"}))
    assert done["responses"][0]["result"]["data"][0] == pytest.approx(single["data"][0], abs=1e-5)


async def test_an_unknown_request_id_and_a_streaming_item_raise_clearly(ai: Ai) -> None:
    with pytest.raises(InferenceUpstreamError) as unknown:
        await ai.run(TINY, {"request_id": "no-such-batch"})
    assert unknown.value.message.startswith("5006: ") and "no-such-batch" in unknown.value.message
    assert ai.lastRequestHttpStatusCode == 404
    with pytest.raises(InferenceUpstreamError) as streamed:
        await ai.run(TINY, {"requests": [{"prompt": "a", "stream": True}]}, {"queueRequest": True})
    assert "requests[0]" in streamed.value.message and "stream" in streamed.value.message


async def test_queue_request_false_is_a_plain_run_and_must_be_a_bool(ai: Ai) -> None:
    answer = await ai.run(TINY, {"prompt": "ROMEO:", "max_tokens": 2}, {"queueRequest": False})
    assert isinstance(answer.response, str) and "usage" in answer
    with pytest.raises(TypeError, match="queueRequest must be True or False"):
        await ai.run(TINY, {"requests": [{"prompt": "a"}]}, {"queueRequest": "yes"})
    assert _query_options({"queueRequest": True, "rejectIfBusy": True}) == {"queueRequest": "true"}
    assert _query_options(None) == {} and _query_options({"queueRequest": False}) == {}

