"""A rank that dies or hangs mid-stream: the stream ends with an error event within the bound,
naming the rank that died first, ``/healthz`` says the model is down, and the instance restarts
behind the same running service; with no restart left, the model has failed for good and says so."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from backend_fixtures import MODEL, OPTIONS, TOKEN, Backend, serving
from gpu_backend import LLM, SamplingParams
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.config import EngineConfig
from gpu_backend.errors import InstanceLostError
from gpu_backend.cluster.sharded_engine import ShardedEngine
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines

TIMEOUT_S = 3.0
DETECTION_SLACK_S = 2.0  # the monitor's poll, process teardown and a busy 2-core machine
HOLD = {"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True, "stream": True, "raw": True}


async def _wait_healthy(client: httpx.AsyncClient, url: str, within_s: float = 90.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if (await client.get(f"{url}/healthz")).status_code == 200:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the instance did not come back within {within_s} s")


@dataclass
class KilledMidStream:
    client: httpx.AsyncClient
    backend: Backend
    rest: str  # what the stream sent after the kill
    ended_s: float  # from the kill to the stream's end

    @property
    def last_event(self) -> str:
        return self.rest.strip().split("\n\n")[-1]


@asynccontextmanager
async def killed_mid_stream(engines: LocalEngines, rank: int) -> AsyncIterator[KilledMidStream]:
    """Serve ``engines``, start a long stream and SIGKILL ``rank`` once its first chunk is in."""
    with serving(create_app(engines, TOKEN)) as url:
        backend = Backend(url, engines)
        async with httpx.AsyncClient(headers=backend.headers(), timeout=30) as client:
            async with client.stream("POST", backend.run_url(), json=HOLD) as reply:
                chunks = reply.aiter_raw()
                await anext(chunks)
                os.kill(engines.engine(MODEL).rank_pids()[rank], signal.SIGKILL)
                killed = time.monotonic()
                rest = b"".join([chunk async for chunk in chunks]).decode()
            yield KilledMidStream(client, backend, rest, time.monotonic() - killed)


async def test_a_killed_rank_ends_the_stream_and_the_instance_restarts(checkpoints: dict[str, Path]) -> None:
    cluster = ClusterConfig.colocated(tp=2, instance_timeout_s=TIMEOUT_S, instance_restarts=1)
    engines = LocalEngines({MODEL: checkpoints["llama"]}, cluster=cluster, **OPTIONS)
    try:
        async with killed_mid_stream(engines, rank=1) as killed:
            client, backend, url = killed.client, killed.backend, killed.backend.url
            health = await client.get(f"{url}/healthz")
            refused = await client.post(backend.run_url(), json={"prompt": "hi"})
            await _wait_healthy(client, url)
            metrics = (await client.get(f"{url}/metrics")).text
            again = await client.post(backend.run_url(), json={"prompt": "The quick brown fox", "raw": True,
                                                               "temperature": 0, "max_tokens": 12})
        assert killed.last_event.startswith('data: {"error"') and "[DONE]" not in killed.rest
        assert "rank 1 exited" in json.loads(killed.last_event.removeprefix("data: "))["error"]["message"]
        assert killed.ended_s < TIMEOUT_S + DETECTION_SLACK_S, killed.ended_s
        assert health.status_code == 503 and MODEL in health.json()["failed"]
        assert health.json()["status"] == "unhealthy" and health.json()["failed_for_good"] == []  # restarting
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        for event, count in (("instance_lost", 1), ("instance_restarted", 1), ("request_lost", 1)):
            assert f'edgewise_instance_events_total{{event="{event}",model="{MODEL}"}} {count}.0' in metrics, metrics
        expected = LLM(str(checkpoints["llama"]), progress=False, **OPTIONS).generate(
            "The quick brown fox", SamplingParams(temperature=0.0, max_tokens=12))[0].outputs[0].text
        assert again.status_code == 200 and again.json()["result"]["response"] == expected
    finally:
        engines.shutdown()


async def test_rank_0_killed_with_no_restart_left_is_named_and_the_model_failed_for_good(
        checkpoints: dict[str, Path]) -> None:
    """SIGKILL the driver (rank 0) of a TP=2 instance: rank 1 exits too, as a knock-on, yet every report
    names rank 0. With no restart left the model has failed for good: /healthz says so, and its
    503s no longer ask the client to retry."""
    cluster = ClusterConfig.colocated(tp=2, instance_timeout_s=TIMEOUT_S, instance_restarts=0)
    engines = LocalEngines({MODEL: checkpoints["llama"]}, cluster=cluster, **OPTIONS)
    try:
        async with killed_mid_stream(engines, rank=0) as killed:
            client, backend, url = killed.client, killed.backend, killed.backend.url
            health = await client.get(f"{url}/healthz")
            refused = await client.post(backend.run_url(), json={"prompt": "hi"})
            openai_refused = await client.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi"})
        event = json.loads(killed.last_event.removeprefix("data: "))
        assert "rank 0 exited with code -9 (killed by SIGKILL)" in event["error"]["message"], event
        assert health.status_code == 503, health.text
        assert health.json()["status"] == "failed" and health.json()["failed_for_good"] == [MODEL]
        reason = health.json()["failed"][MODEL]
        assert reason.startswith("rank 0 exited") and "every restart is used up (0 of 0" in reason, reason
        for answer in (refused, openai_refused):
            assert answer.status_code == 503 and "retry-after" not in answer.headers, answer.headers
            assert "failed permanently and the backend must be restarted" in answer.text, answer.text
    finally:
        engines.shutdown()


def test_a_hung_rank_is_detected_within_the_timeout(checkpoints: dict[str, Path]) -> None:
    engine = ShardedEngine(EngineConfig(model=str(checkpoints["llama"]), **OPTIONS), ClusterConfig.colocated(pp=2, instance_timeout_s=TIMEOUT_S,
                                                                                        instance_restarts=0))

    async def scenario() -> float:
        stream = engine.generate("Once upon a time", SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True),
                                 "held")
        await anext(stream)
        os.kill(engine.rank_pids()[1], signal.SIGSTOP)  # alive, but never answers again
        stopped = time.monotonic()
        with pytest.raises(InstanceLostError):
            async for _ in stream:
                pass
        return time.monotonic() - stopped

    try:
        assert asyncio.run(scenario()) < TIMEOUT_S + DETECTION_SLACK_S
        assert engine.error is not None
        with pytest.raises(InstanceLostError):
            asyncio.run(anext(engine.generate("A", SamplingParams(max_tokens=2), "after")))
    finally:
        engine.shutdown()
