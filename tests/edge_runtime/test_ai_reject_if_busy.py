"""`env.AI.run(model, inputs, {"rejectIfBusy": True})` against a real backend serving the built-in tiny
model: with its one running slot taken, the call raises InferenceUpstreamError "3040: ..." at once,
and a call without the option waits its turn and is answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from edge_runtime.ai import Ai, InferenceUpstreamError, _checked_call, _body_options
from edge_runtime.ai_backends import AiBackends
from edge_runtime.catalog import get_location
from held_engines import HOLD, HeldEngines

from edge_runtime.config import BackendSpec
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.server.admission import BUSY_MESSAGE, Admission
from gpu_backend.server.api import create_app
from gpu_backend.server.background import serving
from gpu_backend.server.client import LocalEngines

TINY = "@cf/edgewise/tiny-shakespeare"
TOKEN = "busy-token"
INPUTS = {"prompt": "ROMEO:", "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[str, HeldEngines, Admission]]:
    engines = LocalEngines({TINY: builtin_model_path(TINY)}, device="cpu", dtype="float32", num_kv_blocks=64,
                           max_num_seqs=1)
    held = HeldEngines(engines)
    try:
        app = create_app(held, TOKEN, max_queue=2)  # type: ignore[arg-type]
        with serving(app) as url:
            yield url, held, app.state.service.admission
    finally:
        engines.shutdown()


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the backend"
        await asyncio.sleep(0.01)


async def test_reject_if_busy_raises_3040_at_once_and_a_plain_call_waits(backend) -> None:
    url, held, admission = backend
    pool = AiBackends([BackendSpec(url, token=TOKEN)])
    ai = Ai(pool, get_location("LHR"))
    held.release.clear()
    try:
        holder = asyncio.ensure_future(ai.run(TINY, INPUTS, {"extraHeaders": {"x-session-affinity": HOLD}}))
        await _until(lambda: admission.in_flight(TINY) == 1)
        plain = asyncio.ensure_future(ai.run(TINY, INPUTS))
        await _until(lambda: admission.queued(TINY) == 1)

        started = time.monotonic()
        with pytest.raises(InferenceUpstreamError) as refused:
            await ai.run(TINY, INPUTS, {"rejectIfBusy": True})
        assert time.monotonic() - started < 1.0
        assert refused.value.message == f"3040: {BUSY_MESSAGE}"
        assert ai.lastRequestHttpStatusCode == 429

        held.release.set()
        answers = await asyncio.wait_for(asyncio.gather(holder, plain), 30)
        assert all(answer.response for answer in answers)
        assert (await ai.run(TINY, INPUTS, {"rejectIfBusy": True})).response  # a free slot: it runs
    finally:
        held.release.set()
        await pool.aclose()
    await _until(lambda: admission.total_in_flight() == 0)


def test_the_option_travels_in_the_body_options_and_must_be_a_bool() -> None:
    _, body = _checked_call(TINY, {**INPUTS, "options": {"other": 1}}, _body_options({"rejectIfBusy": True}))
    assert json.loads(body) == {**INPUTS, "options": {"other": 1, "rejectIfBusy": True}}
    _, plain = _checked_call(TINY, INPUTS, _body_options({"gateway": {"id": "g"}}))
    assert json.loads(plain) == INPUTS
    with pytest.raises(TypeError, match="rejectIfBusy must be True or False"):
        _body_options({"rejectIfBusy": "yes"})
