"""LLMEngine's request handling: bad input, seeds, stop conditions, abort — and it keeps serving."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gpu_backend import (
    LLM,
    CheckpointError,
    InvalidRequestError,
    PromptTooLongError,
    SamplingParams,
    UnsupportedArchitectureError,
)

from checkpoints import read_config, write_config

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(checkpoints: dict[str, Path]) -> LLM:
    return LLM(str(checkpoints["llama"]), device="cpu", dtype="float32", progress=False, num_kv_blocks=48,
               max_model_len=200)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        LLM(str(tmp_path), device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="not a folder"):
        LLM(str(tmp_path / "missing"), device="cpu", progress=False)


def test_unsupported_architecture(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    raw = read_config(checkpoints["llama"])
    raw["architectures"] = ["GPT2LMHeadModel"]
    write_config(folder, raw)
    with pytest.raises(UnsupportedArchitectureError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM"):
        LLM(str(folder), device="cpu", progress=False)


def test_checkpoint_without_weights(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    write_config(folder, read_config(checkpoints["llama"]))
    (folder / "tokenizer.json").write_bytes((checkpoints["llama"] / "tokenizer.json").read_bytes())
    with pytest.raises(CheckpointError, match="safetensors"):
        LLM(str(folder), device="cpu", progress=False)


@pytest.mark.parametrize(
    ("prompt", "params", "error", "match"),
    [
        ("", GREEDY, InvalidRequestError, "empty"),
        ([], GREEDY, InvalidRequestError, "no tokens"),
        ([1, 2, 999], GREEDY, InvalidRequestError, "outside the model's vocabulary"),
        (list(range(5, 205)), GREEDY, PromptTooLongError, "200 tokens"),
    ],
)
def test_bad_requests_are_typed_errors_and_the_engine_goes_on(llm: LLM, prompt, params, error, match) -> None:
    with pytest.raises(error, match=match):
        llm.generate([prompt], params)
    assert llm.engine.block_manager.num_used_blocks == 0
    assert len(llm.generate([[5, 6, 7]], GREEDY)[0].token_ids) == 8


@pytest.mark.parametrize(
    ("options", "match"),
    [({"max_tokens": 0}, "max_tokens"), ({"temperature": math.nan}, "temperature"), ({"top_p": 0.0}, "top_p")],
)
def test_bad_sampling_params(options: dict, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        SamplingParams(**options)


def test_one_bad_prompt_in_a_batch_queues_nothing(llm: LLM) -> None:
    with pytest.raises(InvalidRequestError):
        llm.generate([[5, 6], []], GREEDY)
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.block_manager.num_used_blocks == 0


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm: LLM) -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)
    alone = llm.generate([[5, 6, 7]], seeded)[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    batched = llm.generate([[9, 10], [5, 6, 7], [11]], [others, seeded, others])[1].token_ids
    assert alone == batched
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=12, ignore_eos=True)
    assert llm.generate([[5, 6, 7]], other_seed)[0].token_ids != alone


def test_eos_stops_and_max_tokens_is_length(llm: LLM) -> None:
    free_run = llm.generate([[5, 6, 7]], GREEDY)[0]
    stop_at = free_run.token_ids[3]
    stopped = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=8, stop_token_ids=[stop_at]))[0]
    first = free_run.token_ids.index(stop_at)
    assert stopped.token_ids == free_run.token_ids[: first + 1]
    assert stopped.finish_reason == "stop" and stopped.outputs[0].stop_reason == stop_at
    assert free_run.finish_reason == "length"


def test_min_tokens_holds_back_stop_tokens(llm: LLM) -> None:
    free_run = llm.generate([[5, 6, 7]], GREEDY)[0].token_ids
    stop_at = free_run[0]
    params = SamplingParams(temperature=0.0, max_tokens=8, stop_token_ids=[stop_at], min_tokens=4)
    out = llm.generate([[5, 6, 7]], params)[0].token_ids
    assert len(out) >= 4 and stop_at not in out[:4]


def test_stop_strings_cut_the_text(llm: LLM) -> None:
    free_run = llm.generate([[5, 6, 7]], GREEDY)[0]
    text = free_run.text
    assert len(text) > 4
    stop = text[2:4]
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, stop=[stop]))[0]
    assert out.text == text[: text.index(stop)]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop
    kept = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, stop=[stop], include_stop_str_in_output=True)
    assert llm.generate([[5, 6, 7]], kept)[0].text == text[: text.index(stop) + len(stop)]


def test_abort_frees_blocks_at_every_stage(llm: LLM) -> None:
    engine = llm.engine
    waiting = engine.add_request(list(range(5, 60)), GREEDY)
    assert engine.abort(waiting).finish_reason == "abort"
    assert engine.block_manager.num_used_blocks == 0
    running = engine.add_request(list(range(5, 60)), SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.block_manager.num_used_blocks > 0
    engine.abort(running)
    assert engine.block_manager.num_used_blocks == 0
    assert not engine.has_unfinished_requests()
    assert engine.abort("no-such-request") is None


def test_sampling_filters_and_penalties_through_the_engine(llm: LLM) -> None:
    prompt = [5, 6, 7]
    greedy = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))[0].token_ids
    top_k_1 = SamplingParams(temperature=1.5, top_k=1, max_tokens=16, ignore_eos=True)
    assert llm.generate([prompt], top_k_1)[0].token_ids == greedy  # only the argmax survives top-k 1
    tiny_p = SamplingParams(temperature=1.5, top_p=1e-6, max_tokens=16, ignore_eos=True)
    assert llm.generate([prompt], tiny_p)[0].token_ids == greedy
    strict_min_p = SamplingParams(temperature=1.5, min_p=1.0, max_tokens=16, ignore_eos=True)
    assert llm.generate([prompt], strict_min_p)[0].token_ids == greedy
    # A huge presence penalty forbids every token already generated: no repeats at all.
    no_repeats = SamplingParams(temperature=0.0, presence_penalty=2.0, repetition_penalty=50.0, max_tokens=16,
                                ignore_eos=True)
    tokens = llm.generate([prompt], no_repeats)[0].token_ids
    assert len(set(tokens)) == len(tokens) and not set(tokens) & set(prompt)
    assert len(set(greedy)) < len(greedy)  # the unpenalised run does repeat, so the test can fail


def test_a_penalised_request_in_a_batch_matches_it_alone(llm: LLM) -> None:
    """Penalties need the last token on the host, so such batches wait for the step before them;
    the other rows must not notice."""
    penalised = SamplingParams(temperature=0.0, repetition_penalty=1.8, frequency_penalty=1.0, max_tokens=12,
                               ignore_eos=True)
    plain = SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True)
    prompts = [[9, 10], [5, 6, 7], [11, 12, 13, 14]]
    alone = [llm.generate([prompt], params)[0].token_ids for prompt, params in zip(prompts, [plain, penalised, plain])]
    batched = llm.generate(prompts, [plain, penalised, plain])
    assert [out.token_ids for out in batched] == alone
    assert alone[1] != llm.generate([prompts[1]], SamplingParams(temperature=0.0, max_tokens=12,
                                                                  ignore_eos=True))[0].token_ids


def test_the_step_loop_runs_one_batch_ahead(llm: LLM) -> None:
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    expected = llm.generate([[5, 6, 7]], params)[0].token_ids
    request_id = engine.add_request([5, 6, 7], params)
    assert engine.step() == []  # the prompt is on the device; its token is not read yet
    seq = engine.requests[request_id].seq
    assert seq.has_pending_token and seq.num_tokens == 4
    streamed = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            streamed.extend(output.delta_token_ids)
    assert streamed == expected and not seq.has_pending_token
    assert engine.block_manager.num_used_blocks == 0
    # aborted while its token is on the device: the token is dropped, the blocks are freed at once
    request_id = engine.add_request([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))
    engine.step()
    engine.step()
    seq = engine.requests[request_id].seq
    assert seq.has_pending_token
    aborted = engine.abort(request_id)
    assert aborted.outputs[0].token_ids == expected[:1] and seq.token_ids == [5, 6, 7, expected[0]]
    assert engine.block_manager.num_used_blocks == 0
    assert engine.step() == [] and not engine.has_unfinished_requests()


def test_one_token_rows_run_first_and_results_keep_the_batch_order(checkpoints: dict[str, Path]) -> None:
    """A long prompt's last chunk followed by a one-token prompt: the runner reorders the rows
    (one-token rows first) and maps tokens and logprobs back to their own requests."""
    chunked = LLM(str(checkpoints["llama"]), device="cpu", dtype="float32", progress=False, num_kv_blocks=48,
                  max_model_len=200, max_num_batched_tokens=16)
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=2)
    long_prompt, short_prompt = [(7 * i) % 300 + 3 for i in range(60)], [42]
    batched = chunked.generate([long_prompt, short_prompt], params)
    for prompt, out in zip([long_prompt, short_prompt], batched):
        alone = chunked.generate([prompt], params)[0]
        assert out.token_ids == alone.token_ids
        for got, expected in zip(out.outputs[0].logprobs, alone.outputs[0].logprobs, strict=True):
            assert got.token_id == expected.token_id
            assert math.isclose(got.logprob, expected.logprob, abs_tol=1e-4)
