"""Scheduler: budgets, chunked prefill, admission order, preemption, stopping rules, aborts.

The fake model of scheduler_fakes.py stands in for the model runner.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpu_backend.engine.block_manager import BlockManager
from gpu_backend.engine.sampling_params import SamplingParams
from gpu_backend.engine.scheduler import Scheduler, SchedulerConfig
from gpu_backend.engine.sequence import Sequence, SequenceStatus
from gpu_backend.errors import InvalidRequestError, PromptTooLongError

from scheduler_fakes import BS, EOS, FakeModel, assert_all_free, make, reference, run_all, seq, step

# -- budgets and chunking ------------------------------------------------------------------------

def test_single_sequence_prefills_then_decodes_until_max_tokens() -> None:
    sched, model = make()
    s = seq(range(10, 15), max_tokens=4)
    sched.add(s)
    batch, finished = step(sched, model)
    assert batch.seqs == [s] and batch.num_new_tokens == [5] and batch.num_tokens == 5
    assert not batch.is_decode_only and finished == [] and s.num_computed_tokens == 5
    for _ in range(3):
        batch, finished = step(sched, model)
        assert batch.num_new_tokens == [1] and batch.is_decode_only
    assert finished == [s] and s.finish_reason == "length" and s.status is SequenceStatus.FINISHED
    assert s.completion_token_ids == reference(list(range(10, 15)), 4)
    assert_all_free(sched)


def test_chunked_prefill_spreads_a_long_prompt_within_the_budget() -> None:
    sched, model = make(budget=16)
    s = seq(range(50), max_tokens=2)
    sched.add(s)
    for expected_computed in (16, 32, 48):
        batch, _ = step(sched, model)
        assert batch.num_new_tokens == [16] and s.num_computed_tokens == expected_computed
        assert s.num_completion_tokens == 0
    batch, _ = step(sched, model)
    assert batch.num_new_tokens == [2] and s.num_completion_tokens == 1
    run_all(sched, model)
    assert s.completion_token_ids == reference(list(range(50)), 2)


def test_decodes_and_a_prefill_chunk_share_a_step() -> None:
    sched, model = make(budget=8)
    a = seq([5, 6, 7], max_tokens=10)
    sched.add(a)
    step(sched, model)
    b = seq(range(20, 40), max_tokens=1)
    sched.add(b)
    counts = [step(sched, model)[0].num_new_tokens for _ in range(3)]
    assert counts == [[1, 7], [1, 7], [1, 6]]
    assert b.is_finished and b.finish_reason == "length"
    assert a.completion_token_ids == reference([5, 6, 7], 4)


def test_budget_admits_several_prompts_and_chunks_the_last() -> None:
    sched, model = make(budget=10)
    seqs = [seq([i] * 4, max_tokens=3) for i in (11, 12, 13)]
    for s in seqs:
        sched.add(s)
    batch, _ = step(sched, model)
    assert batch.seqs == seqs and batch.num_new_tokens == [4, 4, 2]
    batch, _ = step(sched, model)
    assert batch.num_new_tokens == [1, 1, 2] and not batch.is_decode_only
    run_all(sched, model)
    assert_all_free(sched)


def test_chunked_prefill_off_waits_for_room_for_the_whole_prompt() -> None:
    sched, model = make(budget=16, max_model_len=16, chunked=False)
    a, b = seq(range(10), max_tokens=2), seq(range(20, 30), max_tokens=2)
    sched.add(a)
    sched.add(b)
    batch, _ = step(sched, model)
    assert batch.seqs == [a] and batch.num_new_tokens == [10]
    batch, _ = step(sched, model)
    assert batch.seqs == [a, b] and batch.num_new_tokens == [1, 10]


def test_is_decode_only_excludes_prompt_tokens_even_one_at_a_time() -> None:
    sched, model = make(budget=5)
    s = seq(range(6), max_tokens=2)
    sched.add(s)
    batch, _ = step(sched, model)
    assert batch.num_new_tokens == [5]
    batch, _ = step(sched, model)
    assert batch.num_new_tokens == [1] and not batch.is_decode_only  # the prompt's last token
    batch, _ = step(sched, model)
    assert batch.num_new_tokens == [1] and batch.is_decode_only


# -- admission order and limits ------------------------------------------------------------------

def test_max_num_seqs_caps_the_running_set() -> None:
    sched, model = make(max_num_seqs=2)
    seqs = [seq([i, i], max_tokens=2 + i) for i in range(3)]
    for s in seqs:
        sched.add(s)
    batch, _ = step(sched, model)
    assert batch.seqs == seqs[:2] and sched.num_waiting == 1
    step(sched, model)  # seqs[0] finishes
    batch, _ = step(sched, model)
    assert batch.seqs == [seqs[1], seqs[2]]
    run_all(sched, model)
    assert_all_free(sched)


def test_fcfs_a_blocked_head_is_not_overtaken() -> None:
    sched, model = make(num_blocks=4)
    a, b, c = seq(range(12), max_tokens=3), seq(range(20, 29), max_tokens=1), seq([1, 2], max_tokens=1)
    for s in (a, b, c):
        sched.add(s)
    batch, _ = step(sched, model)
    assert batch.seqs == [a] and list(sched.waiting) == [b, c]  # c would fit, but b is first
    run_all(sched, model)
    assert [s.finish_reason for s in (a, b, c)] == ["length"] * 3
    assert_all_free(sched)


def test_prefix_is_reused_across_requests_through_the_scheduler() -> None:
    sched, model = make()
    prompt = list(range(30, 42))
    first = seq(prompt, max_tokens=3)
    sched.add(first)
    run_all(sched, model)
    second = seq(prompt, max_tokens=3)
    sched.add(second)
    batch, _ = step(sched, model)
    assert second.num_cached_tokens == 8 and batch.num_new_tokens == [4]  # 3 full blocks, last one recomputed
    run_all(sched, model)
    assert second.completion_token_ids == first.completion_token_ids == reference(prompt, 3)
    # the finished sequence's generated tokens were registered too (prompt 12 + 2 computed)
    assert sched.block_manager.get_num_cached_prefix_tokens(first.token_ids) == 12


# -- preemption ----------------------------------------------------------------------------------

def test_out_of_blocks_preempts_the_latest_arrival_which_later_completes() -> None:
    sched, model = make(num_blocks=4)
    a, b = seq(range(7), max_tokens=4), seq(range(10, 17), max_tokens=4)
    c = seq([1], max_tokens=1)
    sched.add(a)
    sched.add(b)
    step(sched, model)
    step(sched, model)
    sched.add(c)
    batch, _ = step(sched, model)  # a needs a third block, none are free
    assert batch.seqs == [a] and batch.preempted == [b]
    assert list(sched.waiting) == [b, c] and b.block_table == [] and b.num_computed_tokens == 0
    assert b.status is SequenceStatus.WAITING and b.num_completion_tokens == 2
    while b.status is not SequenceStatus.RUNNING:
        batch, _ = step(sched, model)
    assert b in batch.seqs and b.num_computed_tokens - batch.num_new_tokens[batch.seqs.index(b)] == 4
    assert b.num_preemptions == sched.num_preemptions == 1 and b.num_cached_tokens == 0  # usage keeps the first admission's hit
    run_all(sched, model)
    assert a.completion_token_ids == reference(list(range(7)), 4)
    assert b.completion_token_ids == reference(list(range(10, 17)), 4)
    assert c.is_finished
    assert_all_free(sched)


def test_a_sequence_preempts_itself_when_earlier_ones_took_the_blocks() -> None:
    sched, model = make(num_blocks=3)
    a, b = seq(range(4), max_tokens=3), seq(range(10, 14), max_tokens=3)
    sched.add(a)
    sched.add(b)
    step(sched, model)
    c = seq([9], max_tokens=1)
    sched.add(c)
    batch, _ = step(sched, model)
    assert batch.seqs == [a] and batch.preempted == [b]
    assert list(sched.waiting) == [b, c]  # one block is free now, but nothing is admitted this step
    run_all(sched, model)
    assert b.completion_token_ids == reference(list(range(10, 14)), 3)
    assert_all_free(sched)


def test_a_sequence_filling_the_whole_cache_ends_with_length() -> None:
    sched, model = make(num_blocks=2, max_model_len=100)
    s = seq(range(5), max_tokens=None)
    sched.add(s)
    run_all(sched, model)
    assert s.finish_reason == "length" and s.num_tokens == 8
    assert_all_free(sched)


# -- stopping ------------------------------------------------------------------------------------

def always(token: int) -> Callable[[list[int]], int]:
    return lambda _tokens: token


def test_eos_stops_and_min_tokens_suppresses_it() -> None:
    sched, model = make(sample=always(EOS))
    plain, delayed = seq([5], max_tokens=10), seq([5], max_tokens=10, min_tokens=3)
    ignoring = seq([5], max_tokens=5, ignore_eos=True)
    for s in (plain, delayed, ignoring):
        sched.add(s)
    run_all(sched, model)
    assert (plain.finish_reason, plain.num_completion_tokens) == ("stop", 1)
    assert (delayed.finish_reason, delayed.num_completion_tokens) == ("stop", 4)
    assert (ignoring.finish_reason, ignoring.num_completion_tokens) == ("length", 5)
    assert_all_free(sched)


def test_stop_token_ids_stop_and_respect_min_tokens() -> None:
    sched, model = make(sample=always(9))
    plain, delayed = seq([5], stop_token_ids=[9], ignore_eos=True), seq([5], stop_token_ids=[9], min_tokens=2)
    other = seq([5], stop_token_ids=[8], max_tokens=3)
    for s in (plain, delayed, other):
        sched.add(s)
    run_all(sched, model)
    assert (plain.finish_reason, plain.num_completion_tokens) == ("stop", 1)
    assert (delayed.finish_reason, delayed.num_completion_tokens) == ("stop", 3)
    assert (other.finish_reason, other.num_completion_tokens) == ("length", 3)


def test_eos_attached_to_the_params_stops_too() -> None:
    bm = BlockManager(16, BS)
    sched = Scheduler(SchedulerConfig(4, 64, 64), bm)  # no scheduler-wide eos
    model = FakeModel(bm, always(5))
    s = Sequence([1], SamplingParams(max_tokens=10).with_defaults(eos_token_ids=[5]))
    sched.add(s)
    run_all(sched, model)
    assert (s.finish_reason, s.completion_token_ids) == ("stop", [5])


def test_max_model_len_ends_with_length() -> None:
    sched, model = make(max_model_len=10)
    s = seq(range(6), max_tokens=None)
    sched.add(s)
    run_all(sched, model)
    assert s.finish_reason == "length" and s.num_tokens == 10


def test_finish_for_a_stop_string_frees_at_once() -> None:
    sched, model = make()
    s = seq(range(6), max_tokens=10)
    sched.add(s)
    step(sched, model)
    sched.finish(s, "stop")
    assert s.finish_reason == "stop" and s.is_finished
    assert_all_free(sched)
    sched.finish(s, "stop")  # idempotent


# -- aborts --------------------------------------------------------------------------------------

def test_abort_while_waiting_by_request_id() -> None:
    sched, _ = make()
    s = Sequence([1, 2, 3], request_id="req-1")
    sched.add(s)
    assert sched.abort("req-1") is s and s.finish_reason == "abort"
    assert sched.abort("req-1") is None and sched.abort("nope") is None and sched.abort(10**9) is None
    assert_all_free(sched)


def test_abort_mid_prefill_and_while_decoding_frees_everything() -> None:
    sched, model = make(budget=8)
    long, short = seq(range(30)), seq([1, 2, 3])
    sched.add(short)
    sched.add(long)
    step(sched, model)
    assert 0 < long.num_computed_tokens < long.num_tokens
    assert sched.abort(long.seq_id) is long
    step(sched, model)
    assert sched.abort(short) is short and short.num_completion_tokens == 2
    assert sched.abort(short) is None
    assert_all_free(sched)


def test_abort_between_schedule_and_update_is_skipped() -> None:
    sched, model = make()
    a, b = seq([1, 2, 3]), seq([4, 5, 6])
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    sampled = model.execute(batch)
    sched.abort(a.seq_id)
    assert sched.update(batch, sampled) == []
    assert a.num_completion_tokens == 0 and b.num_completion_tokens == 1
    assert sched.running == [b]


# -- intake checks -------------------------------------------------------------------------------

def test_prompt_too_long_for_max_model_len() -> None:
    sched, _ = make(max_model_len=16)
    with pytest.raises(PromptTooLongError, match=r"16 tokens.*17.*max_model_len=16"):
        sched.add(Sequence(range(16)))
    sched.add(Sequence(range(15)))


def test_prompt_too_long_for_the_kv_cache() -> None:
    sched, _ = make(num_blocks=2, max_model_len=100)
    with pytest.raises(PromptTooLongError, match=r"8 tokens.*3 KV blocks of 4 tokens.*2 blocks \(8 tokens\)"):
        sched.add(Sequence(range(8)))
    sched.add(Sequence(range(7)))


def test_duplicate_request_ids_and_readding_are_rejected() -> None:
    sched, model = make()
    s = Sequence([1], request_id="same")
    sched.add(s)
    with pytest.raises(InvalidRequestError, match="same"):
        sched.add(Sequence([2], request_id="same"))
    step(sched, model)
    with pytest.raises(InvalidRequestError, match="already"):
        sched.add(s)


def test_load_properties() -> None:
    sched, model = make(max_num_seqs=1)
    sched.add(seq(range(5)))
    sched.add(seq(range(7)))
    assert (sched.num_waiting, sched.num_running, sched.num_waiting_prompt_tokens) == (2, 0, 12)
    step(sched, model)
    assert (sched.num_waiting, sched.num_running, sched.num_waiting_prompt_tokens) == (1, 1, 7)


@pytest.mark.parametrize("kwargs", [
    {"max_num_seqs": 0, "max_num_batched_tokens": 8, "max_model_len": 8},
    {"max_num_seqs": 1, "max_num_batched_tokens": 0, "max_model_len": 8},
    {"max_num_seqs": 1, "max_num_batched_tokens": 8, "max_model_len": -1},
    {"max_num_seqs": 1, "max_num_batched_tokens": 8, "max_model_len": 16, "enable_chunked_prefill": False},
])
def test_config_is_validated(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(**kwargs)


def test_update_checks_its_inputs() -> None:
    sched, _ = make()
    sched.add(seq([1, 2]))
    batch = sched.schedule()
    with pytest.raises(ValueError, match="1"):
        sched.update(batch, [])
    with pytest.raises(ValueError, match="no token was sampled"):
        sched.update(batch, [None])
