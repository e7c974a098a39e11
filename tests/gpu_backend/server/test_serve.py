"""Serving defaults: on CPU an overloaded backend answers 429 at once instead of queueing for tens of seconds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from backend_fixtures import MODEL, OPTIONS
from gpu_backend import config as config_module
from gpu_backend.server.api import DEFAULT_MAX_QUEUE
from gpu_backend.server.background import local_backend
from gpu_backend.server.serve import default_max_queue

NUM_CLIENTS = 40
HOLD = {"prompt": "Once upon a time", "raw": True, "temperature": 0, "max_tokens": 200, "ignore_eos": True}


def test_the_queue_defaults_to_one_batch_on_cpu_and_256_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "available_cpus", lambda: 2)
    assert default_max_queue("cpu") == 8
    assert default_max_queue("cuda") == DEFAULT_MAX_QUEUE == 256


async def test_cpu_defaults_refuse_the_overload_at_once(checkpoints: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One core: 4 run, 4 wait, and the other clients get 429 + Retry-After within seconds."""
    monkeypatch.setattr(config_module, "available_cpus", lambda: 1)
    options = {key: value for key, value in OPTIONS.items() if key != "max_num_seqs"}
    with local_backend({MODEL: checkpoints["llama"]}, **options) as (url, token):
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=60,
                                     limits=httpx.Limits(max_connections=NUM_CLIENTS)) as client:

            async def ask() -> tuple[int, float, str | None]:
                started = time.monotonic()
                reply = await client.post(f"{url}/client/v4/accounts/a/ai/run/{MODEL}", json=HOLD)
                return reply.status_code, time.monotonic() - started, reply.headers.get("retry-after")

            answers = await asyncio.gather(*(ask() for _ in range(NUM_CLIENTS)))
    refused = [answer for answer in answers if answer[0] == 429]
    assert {status for status, _, _ in answers} <= {200, 429}
    assert len(refused) >= NUM_CLIENTS - 2 * 8, "at most 4 running + 4 queued at a time (and a few after them)"
    assert all(retry_after == "1" for _, _, retry_after in refused)
    assert max(elapsed for _, elapsed, _ in refused) < 10.0
