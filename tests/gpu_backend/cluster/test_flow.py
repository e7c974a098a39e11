"""gpu_backend.cluster.flow and the ShardedEngine around it, with the test playing two colocated
instances' drivers over in-memory pipes (``fake_drivers``): requests routed by load in tokens and
sent as typed messages, outputs streamed back, refusals, clients that leave, and an instance that
fails: its requests end with the reason, the other serves on and new requests avoid it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from fake_drivers import CONFIG, LOAD, FakeDriver, attached_world, collect, output

from gpu_backend.cluster.flow import ColocatedFlow
from gpu_backend.cluster.protocol import AbortRequest, Accepted, AddRequest, Failed, Rejected, StepDone
from gpu_backend.cluster.sharded_engine import ShardedEngine
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.engine.sampling_params import SamplingParams
from gpu_backend.errors import InvalidRequestError, InstanceLostError

PARAMS = SamplingParams(temperature=0.0, max_tokens=2)
WAIT_S = 10.0


@pytest.fixture
def cluster() -> Iterator[tuple[ShardedEngine, list[FakeDriver]]]:
    ranks, drivers = attached_world(2)
    engine = ShardedEngine(CONFIG, ClusterConfig.colocated(instances=2, instance_timeout_s=20.0), attached=ranks)
    yield engine, drivers
    engine.shutdown()


def test_requests_go_to_the_least_loaded_instance_and_stream_back(cluster) -> None:
    engine, (first, second) = cluster
    assert isinstance(engine.flow, ColocatedFlow) and engine.max_num_seqs == 2 * 8

    async def scenario() -> tuple[list, list]:
        long = asyncio.ensure_future(collect(engine.generate(list(range(40)), PARAMS, "long")))
        assert await first.expect(AddRequest) == AddRequest("long", list(range(40)), PARAMS)
        short = asyncio.ensure_future(collect(engine.generate([1, 2], PARAMS, "short")))
        assert await second.expect(AddRequest) == AddRequest("short", [1, 2], PARAMS)  # 40 tokens weigh on the first
        for driver, request_id in ((first, "long"), (second, "short")):
            driver.say(Accepted(request_id))
            driver.say(StepDone([output(request_id, [7], 1)], LOAD))
            driver.say(StepDone([output(request_id, [8], 2, "length")], LOAD))
        return await long, await short

    long, short = asyncio.run(scenario())
    assert [o.new_token_ids for o in long] == [(7,), (8,)] and short[-1].finish_reason == "length"
    assert engine.requests_per_instance == [1, 1] and engine.stats()["kv_blocks_used"] == 2 * LOAD.kv_blocks_used


def test_a_refusal_reaches_the_client_and_a_client_that_leaves_aborts_its_request(cluster) -> None:
    engine, (first, _) = cluster

    async def refused() -> BaseException:
        stream = asyncio.ensure_future(collect(engine.generate([1], PARAMS, "bad")))
        await first.expect(AddRequest)
        first.say(Rejected("bad", InvalidRequestError("max_tokens is too large")))
        return (await asyncio.gather(stream, return_exceptions=True))[0]

    async def leaves() -> None:
        stream = engine.generate([1], PARAMS, "leaver")
        pending = asyncio.ensure_future(anext(stream))
        await first.expect(AddRequest)
        first.say(Accepted("leaver"))
        first.say(StepDone([output("leaver", [7], 1)], LOAD))
        await pending
        await stream.aclose()
        assert await first.expect(AbortRequest) == AbortRequest("leaver")

    assert isinstance(asyncio.run(refused()), InvalidRequestError)
    asyncio.run(leaves())
    assert engine.instance_of("bad") is None and engine.instance_of("leaver") is None


def test_a_instance_that_fails_ends_its_requests_and_the_other_serves_on(cluster) -> None:
    engine, (first, second) = cluster

    async def scenario() -> tuple[BaseException, AddRequest]:
        doomed = asyncio.ensure_future(collect(engine.generate([1], PARAMS, "doomed")))
        await first.expect(AddRequest)
        first.say(Accepted("doomed"))
        first.say(Failed("rank 0: RuntimeError: a collective timed out"))
        error = (await asyncio.gather(doomed, return_exceptions=True))[0]
        deadline = time.monotonic() + WAIT_S
        while not engine.lost_instances and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        after = asyncio.ensure_future(collect(engine.generate([1], PARAMS, "after")))
        added = await second.expect(AddRequest)
        after.cancel()
        return error, added

    error, added = asyncio.run(scenario())
    assert isinstance(error, InstanceLostError) and "a collective timed out" in str(error)
    assert list(engine.lost_instances) == [0] and engine.error is None  # instance 1 is left: the world is not lost
    assert added.request_id == "after"
    assert engine.events == {"instance_lost": 1, "request_lost": 1}


def test_prefill_and_decode_instances_are_not_colocated_ones() -> None:
    ranks, _ = attached_world(2)
    with pytest.raises(ValueError, match="disaggregated flow"):
        ShardedEngine(CONFIG, ClusterConfig.disaggregated(), attached=ranks)
