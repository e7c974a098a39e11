"""A lost instance goes alone: the other instances of the world keep serving, token for token, its
requests end with an error or are computed again elsewhere, and new requests avoid it.

Each test runs a real world over Gloo on CPU, kills (SIGKILL) or freezes (SIGSTOP) one instance's
rank mid-stream, and compares every token with ``LLM.generate``."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from backend_fixtures import MODEL, TOKEN, Backend, serving
from backend_fixtures import OPTIONS as SERVICE_OPTIONS
from gpu_backend import LLM, SamplingParams
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.config import EngineConfig
from gpu_backend.errors import InstanceLostError
from gpu_backend.cluster.sharded_engine import ShardedEngine
from gpu_backend.disagg.flow import sharded_engine
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines

OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 64, "max_model_len": 256,
           "max_num_batched_tokens": 24}
LONG = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
PROMPTS = {"survivor": "Once upon a time there was a king", "doomed": "The quick brown fox"}
DETECTION_SLACK_S = 2.5  # the monitor's poll, process teardown and a busy 2-core machine


def expected(folder: Path, prompt: str, params: SamplingParams = LONG) -> list[int]:
    return LLM(str(folder), progress=False, **OPTIONS).generate(prompt, params)[0].outputs[0].token_ids


async def collect(engine: ShardedEngine, request_id: str, kill_at: int | None = None) -> list[int]:
    """The request's tokens; ``kill_at``: once it has that many, SIGKILL the instance streaming it."""
    tokens: list[int] = []
    async for output in engine.generate(PROMPTS[request_id], LONG, request_id):
        if kill_at is not None and len(tokens) < kill_at <= len(tokens) + len(output.new_token_ids):
            instance = engine.instance_of(request_id)
            assert instance is not None
            os.kill(engine.rank_pids(instance)[0], signal.SIGKILL)
        tokens += output.new_token_ids
    return tokens


async def survivor_and_doomed(engine: ShardedEngine) -> tuple[list[int] | BaseException, ...]:
    survivor = asyncio.ensure_future(collect(engine, "survivor"))
    await asyncio.sleep(0.05)  # routed first, so the other request goes to the other instance
    return tuple(await asyncio.gather(survivor, collect(engine, "doomed", kill_at=5), return_exceptions=True))


def wait_for_free_blocks(engine: ShardedEngine, total: int) -> None:
    deadline = time.monotonic() + 10
    while engine.stats()["kv_blocks_free"] != total or engine.stats()["num_running"]:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.05)


@pytest.mark.parametrize("policy", ["error", "recompute"])
def test_a_lost_colocated_instance_leaves_the_other_serving(checkpoints: dict[str, Path], policy: str) -> None:
    folder = checkpoints["llama"]
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS),
                           ClusterConfig.colocated(instances=2, instance_timeout_s=20.0, on_instance_loss=policy,
                                                   instance_restarts=1))
    try:
        survivor, doomed = asyncio.run(survivor_and_doomed(engine))
        assert survivor == expected(folder, PROMPTS["survivor"])
        if policy == "error":
            assert isinstance(doomed, InstanceLostError) and "rank 1 exited" in str(doomed), doomed
        else:  # computed again on instance 0 from where it was: no gap
            assert doomed == expected(folder, PROMPTS["doomed"])
        assert engine.error is None and engine.restarts == 0 and list(engine.lost_instances) == [1]
        after = asyncio.run(collect(engine, "doomed"))  # a new request avoids the lost instance
        assert after == expected(folder, PROMPTS["doomed"])
        wait_for_free_blocks(engine, 64)  # instance 0's, all back
        lost = "request_lost" if policy == "error" else "request_recomputed"
        assert engine.events == {"instance_lost": 1, lost: 1}
    finally:
        engine.shutdown()


def test_a_lost_decode_instance_leaves_the_other_decoding(checkpoints: dict[str, Path]) -> None:
    """One prefill and two decode instances: the stream of the killed decode instance is prefilled again
    (prompt and tokens so far) and handed to the other, which goes on with its own stream too."""
    folder = checkpoints["llama"]
    cluster = ClusterConfig.disaggregated(decode_instances=2, instance_timeout_s=20.0, on_instance_loss="recompute",
                                          instance_restarts=0)
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS), cluster)
    try:
        survivor, doomed = asyncio.run(survivor_and_doomed(engine))
        assert survivor == expected(folder, PROMPTS["survivor"])
        assert doomed == expected(folder, PROMPTS["doomed"])
        assert engine.error is None and list(engine.lost_instances) == [2]  # instance 1 took the survivor
        wait_for_free_blocks(engine, 2 * 64)  # the prefill instance's and decode instance 1's
        assert engine.events == {"instance_lost": 1, "request_recomputed": 1}
    finally:
        engine.shutdown()


def test_a_frozen_prefill_instance_is_found_by_its_heartbeat(checkpoints: dict[str, Path]) -> None:
    """A prefill instance stopped (SIGSTOP) before it computes a prompt: found within the heartbeat
    timeout, long before the collectives' bound; the prompt is computed by the other prefill instance."""
    folder = checkpoints["llama"]
    heartbeat_s = 2.0
    cluster = ClusterConfig.disaggregated(prefill_instances=2, instance_timeout_s=60.0, on_instance_loss="recompute",
                                          heartbeat_timeout_s=heartbeat_s, instance_restarts=0)
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS), cluster)
    try:
        os.kill(engine.rank_pids(0)[0], signal.SIGSTOP)  # the first prefill instance, the router's first pick
        frozen = time.monotonic()

        async def scenario() -> tuple[list[int], float]:
            task = asyncio.ensure_future(collect(engine, "doomed"))
            while not engine.lost_instances and time.monotonic() - frozen < 30:
                await asyncio.sleep(0.01)
            found_s = time.monotonic() - frozen
            return await task, found_s

        tokens, found_s = asyncio.run(scenario())
        assert tokens == expected(folder, PROMPTS["doomed"])
        assert found_s < heartbeat_s + DETECTION_SLACK_S
        assert list(engine.lost_instances) == [0] and "gave no sign of life" in engine.lost_instances[0]
        assert engine.requests_per_instance[:2] == [1, 1]
        wait_for_free_blocks(engine, 2 * 64)
    finally:
        engine.shutdown()


async def test_healthz_names_the_lost_instance_while_the_others_serve(checkpoints: dict[str, Path]) -> None:
    cluster = ClusterConfig.colocated(instances=2, instance_timeout_s=20.0, instance_restarts=0)
    engines = LocalEngines({MODEL: checkpoints["llama"]}, cluster=cluster, **SERVICE_OPTIONS)
    try:
        with serving(create_app(engines, TOKEN)) as url:
            backend = Backend(url, engines)
            async with httpx.AsyncClient(headers=backend.headers(), timeout=30) as client:
                os.kill(engines.engine(MODEL).rank_pids(1)[0], signal.SIGKILL)
                killed, health = time.monotonic(), None
                while time.monotonic() - killed < DETECTION_SLACK_S:
                    health = (await client.get(f"{url}/healthz")).json()
                    if health["status"] != "ok":
                        break
                    await asyncio.sleep(0.05)
                reply = await client.post(backend.run_url(), json={"prompt": "The quick brown fox", "raw": True,
                                                                   "temperature": 0, "max_tokens": 12})
                metrics = (await client.get(f"{url}/metrics")).text
        assert health is not None and health["status"] == "degraded", health
        assert "rank 1 exited" in health["lost_instances"][MODEL]["1"]
        want = LLM(str(checkpoints["llama"]), progress=False, **SERVICE_OPTIONS).generate(
            "The quick brown fox", SamplingParams(temperature=0.0, max_tokens=12))[0].outputs[0].text
        assert reply.status_code == 200 and reply.json()["result"]["response"] == want
        assert f'edgewise_instance_events_total{{event="instance_lost",model="{MODEL}"}} 1.0' in metrics
    finally:
        engines.shutdown()


def test_a_prefill_instance_killed_while_its_kv_goes_out(checkpoints: dict[str, Path]) -> None:
    """Two prefill instances, one decode instance: the prefill instance computing a long prompt is killed
    once the first chunk of its KV went out; the prompt is prefilled again by the other and every
    token equals one process's, every block of the survivors comes back."""
    folder = checkpoints["llama"]
    cluster = ClusterConfig.disaggregated(prefill_instances=2, instance_timeout_s=20.0, on_instance_loss="recompute",
                                          instance_restarts=0)
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS), cluster)
    prompt = " ".join([PROMPTS["survivor"]] * 5)  # about 170 tokens: 8 steps of 24

    async def scenario() -> list[int]:
        task = asyncio.ensure_future(collect_prompt(engine, prompt, "long"))
        while engine.flow.kv_chunks_relayed == 0:
            await asyncio.sleep(0.001)
        os.kill(engine.rank_pids(0)[0], signal.SIGKILL)  # the router's first pick
        return await task

    try:
        assert asyncio.run(scenario()) == expected(folder, prompt)
        assert list(engine.lost_instances) == [0] and engine.error is None
        assert engine.events == {"instance_lost": 1, "request_recomputed": 1}  # lost mid-prompt, not after
        wait_for_free_blocks(engine, 2 * 64)
    finally:
        engine.shutdown()


async def collect_prompt(engine: ShardedEngine, prompt: str, request_id: str) -> list[int]:
    tokens: list[int] = []
    async for output in engine.generate(prompt, LONG, request_id):
        tokens += output.new_token_ids
    return tokens
