"""Workers AI's ``rejectIfBusy`` on the REST run route: with every running slot of the model taken, a
request that sets it is refused at once (429, code 3040, ``Retry-After``) while a plain one queues and
is answered; either way no slot or KV block is left behind. An embedder busy with its one batch refuses
it too.

The slots are filled with real generations of the built-in tiny model that are held after their
first token until the test lets them go, so "every slot is taken" does not depend on how fast the
CPU decodes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from backend_fixtures import EMBEDDINGS, MINILM, TOKEN, serving
from held_engines import HOLD, HeldEngines
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.server.admission import BUSY_MESSAGE, RETRY_AFTER_S, Admission
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines
from gpu_backend.server.errors import OverloadedError

TINY = "@cf/edgewise/tiny-shakespeare"
MAX_NUM_SEQS = 2
REFUSED_WITHIN_S = 1.0
BODY = {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[str, HeldEngines, Admission]]:
    models = {TINY: builtin_model_path(TINY), EMBEDDINGS: builtin_model_path(MINILM)}
    engines = LocalEngines(models, device="cpu", dtype="float32", num_kv_blocks=64, max_num_seqs=MAX_NUM_SEQS)
    held = HeldEngines(engines)
    try:
        app = create_app(held, TOKEN, max_queue=4)  # type: ignore[arg-type]
        with serving(app) as url:
            yield f"{url}/client/v4/accounts/acct/ai/run/{TINY}", held, app.state.service.admission
    finally:
        engines.shutdown()


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the backend"
        await asyncio.sleep(0.01)


async def _wait_idle(engines: LocalEngines, admission: Admission) -> None:
    def idle() -> bool:
        stats = engines.stats()[TINY]
        return not (admission.total_in_flight() or stats["num_running"] or stats["num_waiting"]
                    or stats["kv_blocks_used"])
    await _until(idle)


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)


async def test_busy_model_refuses_reject_if_busy_at_once_and_queues_a_plain_request(backend) -> None:
    url, held, admission = backend
    held.release.clear()
    async with _client() as client:
        holders = [asyncio.ensure_future(client.post(url, json=BODY, headers={"x-session-affinity": HOLD}))
                   for _ in range(MAX_NUM_SEQS)]
        await _until(lambda: admission.in_flight(TINY) == MAX_NUM_SEQS)
        plain = asyncio.ensure_future(client.post(url, json=BODY))
        await _until(lambda: admission.queued(TINY) == 1)  # the plain request waits, it is not refused

        started = time.monotonic()
        refused = await client.post(url, json={**BODY, "options": {"rejectIfBusy": True}})
        assert time.monotonic() - started < REFUSED_WITHIN_S
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == str(RETRY_AFTER_S)
        assert refused.json() == {"result": None, "success": False, "messages": [],
                                  "errors": [{"code": 3040, "message": BUSY_MESSAGE}]}
        assert admission.in_flight(TINY) == MAX_NUM_SEQS + 1  # the refusal took nothing

        held.release.set()
        replies = await asyncio.gather(plain, *holders)
    assert [reply.status_code for reply in replies] == [200] * (MAX_NUM_SEQS + 1)
    assert replies[0].json()["result"]["response"]
    await _wait_idle(held.engines, admission)


async def test_reject_if_busy_runs_when_a_slot_is_free(backend) -> None:
    url, held, admission = backend
    held.release.clear()
    async with _client() as client:
        holder = asyncio.ensure_future(client.post(url, json=BODY, headers={"x-session-affinity": HOLD}))
        await _until(lambda: admission.in_flight(TINY) == 1)
        answered = await client.post(url, json={**BODY, "options": {"rejectIfBusy": True}})
        off = await client.post(url, json={**BODY, "options": {"rejectIfBusy": False}})
        held.release.set()
        assert (await holder).status_code == 200
    assert answered.status_code == 200 and answered.json()["result"]["response"]
    assert off.status_code == 200
    await _wait_idle(held.engines, admission)


@pytest.mark.parametrize("options, named", [("yes", "'options' must be an object"),
                                            ({"rejectIfBusy": "true"}, "'options.rejectIfBusy' must be true or false")])
async def test_bad_options_are_400_naming_the_field(backend, options: Any, named: str) -> None:
    url, held, admission = backend
    async with _client() as client:
        reply = await client.post(url, json={**BODY, "options": options})
    assert reply.status_code == 400
    assert named in reply.json()["errors"][0]["message"]
    await _wait_idle(held.engines, admission)


async def test_a_busy_embedder_refuses_reject_if_busy(backend) -> None:
    url, held, admission = backend
    embed_url = url.replace(TINY, EMBEDDINGS)
    held.release.clear()
    async with _client() as client:
        holder = asyncio.ensure_future(client.post(embed_url, json={"text": [HOLD]}))
        await _until(lambda: admission.in_flight(EMBEDDINGS) == 1)  # an embedder runs one batch at a time
        refused = await client.post(embed_url, json={"text": ["hi"], "options": {"rejectIfBusy": True}})
        held.release.set()
        assert (await holder).status_code == 200
    assert refused.status_code == 429 and refused.json()["errors"][0]["code"] == 3040
    assert refused.headers["retry-after"] == str(RETRY_AFTER_S)
    await _until(lambda: admission.total_in_flight() == 0)


def test_admission_refuses_only_requests_that_would_queue() -> None:
    admission = Admission(max_queue=2, capacity=lambda model: 1)
    with admission.slot("m", reject_if_busy=True):
        with pytest.raises(OverloadedError) as refused:
            with admission.slot("m", reject_if_busy=True):
                pass
        assert refused.value.code == 3040 and refused.value.retry_after_s == RETRY_AFTER_S
        assert refused.value.message == BUSY_MESSAGE
        with admission.slot("m"):  # without the option it queues
            assert admission.queued("m") == 1
    assert admission.total_in_flight() == 0


async def test_openai_routes_and_the_websocket_take_the_top_level_options(backend) -> None:
    """``/v1/chat/completions`` and ``/v1/embeddings`` take Workers AI's top-level ``options`` (the openai SDK
    sends it as extra_body), and so does a WebSocket frame: refused at once with 3040 while every slot is taken."""
    import openai
    import websockets

    url, held, admission = backend
    base = url.split("/client/v4")[0]
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0)
    messages = [{"role": "user", "content": "ROMEO:"}]
    held.release.clear()
    async with _client() as http:
        holders = [asyncio.ensure_future(http.post(url, json=BODY, headers={"x-session-affinity": HOLD}))
                   for _ in range(MAX_NUM_SEQS)]
        await _until(lambda: admission.in_flight(TINY) == MAX_NUM_SEQS)
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model=TINY, messages=messages, max_tokens=4,
                                                 extra_body={"options": {"rejectIfBusy": True}})
        assert time.monotonic() - started < REFUSED_WITHIN_S
        assert refused.value.status_code == 429 and "3040" in str(refused.value.body) + str(refused.value)
        socket_url = url.replace("http://", "ws://")
        async with websockets.connect(socket_url, additional_headers={"authorization": f"Bearer {TOKEN}"}) as socket:
            await socket.send(json.dumps({**BODY, "options": {"rejectIfBusy": True}}))
            frame = json.loads(await asyncio.wait_for(socket.recv(), 5))
            assert frame["done"] and frame["error"]["code"] == 3040
        held.release.set()
        assert [(await holder).status_code for holder in holders] == [200] * MAX_NUM_SEQS
    plain = await client.chat.completions.create(model=TINY, messages=messages, max_tokens=4,
                                                 extra_body={"options": {"rejectIfBusy": True}})
    assert plain.choices[0].message.content is not None  # a free slot: it runs
    await client.close()
    await _wait_idle(held.engines, admission)
