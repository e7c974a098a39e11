"""AsyncLLM: streamed outputs (token ids, no text) add up to the offline result; leaving the stream
early aborts and frees."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_backend import LLM, AsyncLLM, InvalidRequestError, SamplingParams

PARAMS = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture
def engine(checkpoints: dict[str, Path]) -> Iterator[AsyncLLM]:
    llm = AsyncLLM(str(checkpoints["qwen2"]), device="cpu", dtype="float32", progress=False, num_kv_blocks=40)
    yield llm
    llm.shutdown()


async def collect(llm: AsyncLLM, prompt: list[int], params: SamplingParams = PARAMS) -> list:
    return [output async for output in llm.generate(prompt, params)]


async def test_stream_adds_up_to_the_offline_result(engine: AsyncLLM, checkpoints: dict[str, Path]) -> None:
    prompts = [[5, 6, 7], list(range(20, 60)), [100]]
    streams = await asyncio.gather(*(collect(engine, p) for p in prompts))
    offline = LLM(str(checkpoints["qwen2"]), device="cpu", dtype="float32", progress=False, num_kv_blocks=40)
    expected = offline.generate(prompts, PARAMS)
    for prompt, outputs, reference in zip(prompts, streams, expected):
        assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])
        assert [t for o in outputs for t in o.new_token_ids] == reference.token_ids
        # each output holds its step's token only, with the counts so far
        assert [len(o.new_token_ids) for o in outputs] == [1] * 12
        assert [o.num_completion_tokens for o in outputs] == list(range(1, 13))
        assert {o.num_prompt_tokens for o in outputs} == {len(prompt)}
        assert outputs[-1].finish_reason == "length"


async def test_validation_errors_reach_the_caller(engine: AsyncLLM) -> None:
    with pytest.raises(InvalidRequestError, match="no tokens"):
        await collect(engine, [])
    assert (await collect(engine, [5]))[-1].num_completion_tokens == 12


async def test_leaving_the_stream_aborts_and_frees_blocks(engine: AsyncLLM) -> None:
    long_run = SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True)
    stream = engine.generate(list(range(5, 40)), long_run)
    first = await stream.__anext__()
    assert not first.finished
    await stream.aclose()  # what a web handler does when its client disconnects
    for _ in range(100):
        if engine.stats()["kv_blocks_used"] == 0 and engine.stats()["num_running"] == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.stats() == {"num_running": 0, "num_waiting": 0, "kv_blocks_free": 40, "kv_blocks_used": 0,
                              "num_preemptions": 0}


async def test_cancelled_consumer_aborts(engine: AsyncLLM) -> None:
    long_run = SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True)
    task = asyncio.create_task(collect(engine, list(range(5, 40)), long_run))
    while engine.stats()["num_running"] == 0:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await engine.abort("not-running")  # waits for the engine thread to have handled everything before it
    assert engine.stats()["kv_blocks_used"] == 0


async def test_explicit_abort_ends_the_stream(engine: AsyncLLM) -> None:
    long_run = SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True)
    stream = engine.generate(list(range(5, 40)), long_run, request_id="r1")
    await stream.__anext__()
    await engine.abort("r1")
    rest = [output async for output in stream]
    assert rest and rest[-1].finished and rest[-1].finish_reason == "abort"
    assert engine.stats()["kv_blocks_used"] == 0


def test_engine_failure_fails_streams_instead_of_hanging(checkpoints: dict[str, Path]) -> None:
    real = AsyncLLM(str(checkpoints["qwen2"]), device="cpu", dtype="float32", progress=False, num_kv_blocks=40)
    def failing_step() -> list:
        raise RuntimeError("device lost")

    real.engine.step = failing_step  # type: ignore[method-assign]

    async def run() -> None:
        with pytest.raises(Exception, match="device lost"):
            await asyncio.wait_for(collect(real, [5, 6]), timeout=10)

    asyncio.run(run())
    real.shutdown()


async def test_shutdown_ends_running_streams_and_refuses_new_ones(checkpoints: dict[str, Path]) -> None:
    llm = AsyncLLM(str(checkpoints["qwen2"]), device="cpu", dtype="float32", progress=False, num_kv_blocks=40)
    long_run = SamplingParams(temperature=0.0, max_tokens=5000, ignore_eos=True)
    stream = llm.generate(list(range(5, 40)), long_run)
    await stream.__anext__()
    await asyncio.to_thread(llm.shutdown)
    with pytest.raises(Exception, match="shut down"):
        async for _ in stream:
            pass
    with pytest.raises(Exception, match="shut down"):
        await asyncio.wait_for(collect(llm, [5, 6]), timeout=10)


async def test_a_caller_that_leaves_before_the_engine_took_its_request_still_aborts_it(
        engine: AsyncLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine thread is busy (held inside add_request) when the caller leaves: once free, it
    must abort the request it then takes, not run it to max_tokens for nobody."""
    busy, entered = threading.Event(), threading.Event()
    add_request, aborted = engine.engine.add_request, []

    def slow_add(*args: object, **kwargs: object) -> None:
        entered.set()
        busy.wait(10)
        add_request(*args, **kwargs)

    def abort(request_id: str) -> object:
        output = real_abort(request_id)
        aborted.append(output is not None)  # True: it was still running
        return output

    real_abort = engine.engine.abort
    monkeypatch.setattr(engine.engine, "add_request", slow_add)
    monkeypatch.setattr(engine.engine, "abort", abort)
    waiting = asyncio.ensure_future(anext(engine.generate([5, 6, 7], SamplingParams(max_tokens=500,
                                                                                    ignore_eos=True))))
    await asyncio.to_thread(entered.wait, 10)
    waiting.cancel()  # the caller leaves while its request is being added
    await asyncio.gather(waiting, return_exceptions=True)
    busy.set()
    for _ in range(500):
        if aborted and engine.stats()["num_running"] == 0:
            break
        await asyncio.sleep(0.01)
    assert aborted == [True] and engine.stats()["kv_blocks_used"] == 0
