"""gpu_backend.disagg.flow: the service's side of prefill then decode, with the test playing one
prefill and two decode instances' drivers over in-memory pipes (``fake_drivers``). Each step of the
flow is checked as the typed messages it sends: decode instance picked first, blocks reserved
(asked again while none are free), prompt sent to prefill, KV chunks relayed in order, the first
token handed on; and the ways it ends early: a stop at the first token, a refusal, a client that
leaves, a failed transfer whose pair is never used again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fake_drivers import CONFIG, LOAD, FakeDriver, attached_world, collect, output

from gpu_backend.cluster.protocol import AbortRequest, Accepted, Rejected, StepDone
from gpu_backend.cluster.sharded_engine import ShardedEngine
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.disagg.flow import DisaggregatedFlow, sharded_engine
from gpu_backend.disagg.kv_transfer import KVTransferError
from gpu_backend.disagg.protocol import Admit, Handoff, KVChunk, KVPushed, Prefill, Reserve, Reserved, TransferFailed
from gpu_backend.engine.sampling_params import SamplingParams
from gpu_backend.errors import InvalidRequestError

PROMPT = [1, 2, 3, 4, 5]
PARAMS = SamplingParams(temperature=0.0, max_tokens=3)
CLUSTER = ClusterConfig.disaggregated(decode_instances=2, instance_timeout_s=20.0)


@pytest.fixture
def cluster() -> Iterator[tuple[ShardedEngine, list[FakeDriver]]]:
    ranks, drivers = attached_world(3)  # prefill instance 0, decode instances 1 and 2
    engine = sharded_engine(CONFIG, CLUSTER, attached=ranks)
    yield engine, drivers
    engine.shutdown()


async def handed_to_decode(prefill: FakeDriver, decode: FakeDriver, request_id: str, decode_instance: int) -> None:
    """Reserve on the decode instance, prefill with the hand-off, one chunk of KV on its way."""
    assert await decode.expect(Reserve) == Reserve(request_id, PROMPT, PARAMS)
    decode.say(Reserved(request_id, [7]))
    assert await prefill.expect(Prefill) == Prefill(request_id, PROMPT, PARAMS, Handoff(decode_instance, 1))
    prefill.say(Accepted(request_id))
    prefill.say(KVPushed([KVChunk(request_id, 0, decode_instance, 0, 1)]))


def test_a_request_goes_through_reserve_prefill_relay_and_admit(cluster) -> None:
    engine, (prefill, decode, _) = cluster
    assert isinstance(engine.flow, DisaggregatedFlow) and engine.max_num_seqs == 2 * 8  # decode instances only

    async def scenario() -> list:
        stream = asyncio.ensure_future(collect(engine.generate(PROMPT, PARAMS, "r1")))
        await handed_to_decode(prefill, decode, "r1", 1)
        prefill.say(StepDone([output("r1", [11], 1, "length")], LOAD))  # the first token
        assert await decode.expect(KVChunk) == KVChunk("r1", 0, 1, 0, 1)  # relayed before the admission
        assert await decode.expect(Admit) == Admit("r1", 11)
        decode.say(StepDone([output("r1", [12], 2), output("r1", [13], 3, "length")], LOAD))
        return await stream

    outputs = asyncio.run(scenario())
    assert [token for o in outputs for token in o.new_token_ids] == [11, 12, 13]
    assert [o.finish_reason for o in outputs] == [None, None, "length"]  # the prefill instance's end is not the end
    assert engine.flow.kv_chunks_relayed == 1 and engine.requests_per_instance == [1, 0, 0]
    assert prefill.unread() == [] and decode.unread() == []


def test_one_token_asked_for_needs_no_decode_instance(cluster) -> None:
    engine, (prefill, decode, other) = cluster

    async def scenario() -> list:
        stream = asyncio.ensure_future(collect(engine.generate(PROMPT, SamplingParams(max_tokens=1), "one")))
        assert (await prefill.expect(Prefill)).handoff is None
        prefill.say(Accepted("one"))
        prefill.say(StepDone([output("one", [11], 1, "length")], LOAD))
        return await stream

    assert [o.finish_reason for o in asyncio.run(scenario())] == ["length"]
    assert decode.unread() == [] and other.unread() == []


def test_a_stop_at_the_first_token_frees_the_reserved_blocks(cluster) -> None:
    engine, (prefill, decode, _) = cluster

    async def scenario() -> list:
        stream = asyncio.ensure_future(collect(engine.generate(PROMPT, PARAMS, "stopped")))
        await handed_to_decode(prefill, decode, "stopped", 1)
        prefill.say(StepDone([output("stopped", [2], 1, "stop")], LOAD))
        await decode.expect(KVChunk)
        assert await decode.expect(AbortRequest) == AbortRequest("stopped")
        return await stream

    assert [o.finish_reason for o in asyncio.run(scenario())] == ["stop"]


def test_no_free_blocks_means_asking_again_and_a_refusal_frees_them(cluster) -> None:
    engine, (prefill, decode, _) = cluster

    async def scenario() -> BaseException:
        stream = asyncio.ensure_future(collect(engine.generate(PROMPT, PARAMS, "r")))
        await decode.expect(Reserve)
        decode.say(Reserved("r", None))  # none free now
        await decode.expect(Reserve)
        decode.say(Reserved("r", [7]))
        await prefill.expect(Prefill)
        prefill.say(Rejected("r", InvalidRequestError("the prompt is too long")))
        assert await decode.expect(AbortRequest) == AbortRequest("r")
        return (await asyncio.gather(stream, return_exceptions=True))[0]

    error = asyncio.run(scenario())
    assert isinstance(error, InvalidRequestError) and "too long" in str(error)


def test_a_client_that_leaves_frees_the_blocks_at_each_stage(cluster) -> None:
    engine, (prefill, decode, _) = cluster

    async def leave(request_id: str, stage: int) -> None:
        stream = asyncio.ensure_future(collect(engine.generate(PROMPT, PARAMS, request_id)))
        await decode.expect(Reserve)
        if stage > 0:  # left while prefilling
            decode.say(Reserved(request_id, [7]))
            await prefill.expect(Prefill)
            prefill.say(Accepted(request_id))
        await asyncio.sleep(0.05)
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)
        if stage == 0:  # left while its blocks were reserved
            assert await decode.expect(AbortRequest) == AbortRequest(request_id)
            return
        assert await prefill.expect(AbortRequest) == AbortRequest(request_id)
        prefill.say(StepDone([output(request_id, [11], 1, "length")], LOAD))  # its KV is on its way: take it, then let go
        assert await decode.expect(Admit) == Admit(request_id, 11)
        assert await decode.expect(AbortRequest) == AbortRequest(request_id)

    asyncio.run(leave("reserved", 0))
    asyncio.run(leave("prefilling", 1))
    assert engine.instance_of("reserved") is None and engine.instance_of("prefilling") is None


def test_a_failed_transfer_ends_the_request_and_its_pair_is_never_used_again(cluster) -> None:
    engine, (prefill, decode, other) = cluster

    async def failed() -> BaseException:
        stream = asyncio.ensure_future(collect(engine.generate(PROMPT, PARAMS, "lost")))
        await handed_to_decode(prefill, decode, "lost", 1)
        prefill.say(StepDone([output("lost", [11], 1, "length")], LOAD))
        await decode.expect(KVChunk)
        await decode.expect(Admit)
        decode.say(TransferFailed("lost", "receive from rank 0 timed out"))
        assert await decode.expect(AbortRequest) == AbortRequest("lost")
        return (await asyncio.gather(stream, return_exceptions=True))[0]

    async def next_request() -> Reserve:
        stream = asyncio.ensure_future(collect(engine.generate(PROMPT, PARAMS, "next")))
        reserve = await other.expect(Reserve)
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)
        return reserve

    error = asyncio.run(failed())
    assert isinstance(error, KVTransferError) and "did not reach decode instance 1" in str(error)
    assert engine.flow.broken_pairs == {(0, 1)} and engine.events["transfer_failed"] == 1
    assert asyncio.run(next_request()).request_id == "next"  # decode instance 2: its pair still works
    assert engine.error is None and decode.unread() == []
