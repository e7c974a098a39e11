"""Scheduler with tokens still on the device (the engine runs one step ahead), and a randomized
workload run both synchronously and one step ahead."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from gpu_backend.engine.scheduler import ScheduledBatch, Scheduler
from gpu_backend.engine.sequence import PENDING_TOKEN, Sequence, SequenceStatus

from scheduler_fakes import EOS, assert_all_free, make, next_token, pending_values, reference, seq, step_ahead

# -- tokens still on the device ------------------------------------------------------------------

def test_pending_tokens_give_the_same_tokens_as_synchronous_steps() -> None:
    sched, model = make()
    seqs = [seq(range(3, 3 + n), max_tokens=m) for n, m in [(5, 9), (11, 1), (2, 14)]]
    for s in seqs:
        sched.add(s)
    in_flight = None
    for _ in range(100):
        if not sched.has_unfinished:
            break
        in_flight = step_ahead(sched, model, in_flight)
    assert in_flight is not None and not sched.has_unfinished
    sched.resolve(*in_flight)
    for s, (n, m) in zip(seqs, [(5, 9), (11, 1), (2, 14)]):
        assert s.finish_reason == "length" and s.completion_token_ids == reference(list(range(3, 3 + n)), m)
        assert not s.has_pending_token
    assert_all_free(sched)


def test_resolve_stops_on_a_stop_token_and_a_length_end_becomes_stop() -> None:
    sched, _ = make()
    a, b, c = seq([5, 6]), seq([7, 8], max_tokens=1), seq([9, 10])
    for s in (a, b, c):
        sched.add(s)
    batch = sched.schedule()
    assert sched.update(batch, [PENDING_TOKEN] * 3) == [b]  # b reached max_tokens: ends now, by length
    assert b.finish_reason == "length" and b.block_table == [] and a.has_pending_token
    assert a.token_ids[-1] == PENDING_TOKEN and a.num_tokens == 3
    resolved = sched.resolve(batch, [EOS, EOS, 33])
    assert resolved == [a, b, c]
    assert a.finish_reason == "stop" and a.token_ids == [5, 6, EOS] and a.block_table == []
    assert b.finish_reason == "stop" and b.token_ids == [7, 8, EOS]  # eos decides, as in a synchronous step
    assert c.status is SequenceStatus.RUNNING and c.token_ids == [9, 10, 33] and not c.has_pending_token
    assert sched.running == [c]


def test_resolve_skips_aborted_sequences_and_fills_preempted_ones() -> None:
    sched, model = make(num_blocks=3)  # two 4-token prompts take a block each; one more is left
    a, b = seq(range(3, 7)), seq(range(13, 17))
    sched.add(a)
    sched.add(b)
    batch, sampled = step_ahead(sched, model, None)
    assert a.has_pending_token and b.has_pending_token
    batch2 = sched.schedule()  # both need a second block for their 5th token
    assert batch2.seqs == [a] and batch2.preempted == [b]
    assert b.status is SequenceStatus.WAITING and b.has_pending_token
    sched.abort(a.request_id)
    assert sched.resolve(batch, sampled) == [b]
    assert a.token_ids == [3, 4, 5, 6] and a.finish_reason == "abort"  # its pending token is dropped
    assert b.token_ids[-1] == next_token(list(range(13, 17))) and not b.has_pending_token


# -- randomized stress ---------------------------------------------------------------------------

def check_invariants(sched: Scheduler) -> None:
    bm = sched.block_manager
    holders: Counter[int] = Counter()
    indices: defaultdict[int, set[int]] = defaultdict(set)
    for s in sched.running:
        assert s.status is SequenceStatus.RUNNING and s.num_computed_tokens < s.num_tokens
        assert len(s.block_table) >= bm.blocks_needed(s.num_computed_tokens)
        assert len(s.block_table) <= bm.blocks_needed(s.num_tokens)
        for index, block_id in enumerate(s.block_table):
            holders[block_id] += 1
            indices[block_id].add(index)
    for s in sched.waiting:
        assert s.status is SequenceStatus.WAITING and s.block_table == []
    assert [b.ref_count for b in bm.blocks] == [holders[i] for i in range(bm.num_blocks)]
    for block_id, count in holders.items():
        if count > 1:  # only a shared prefix: same position in every table, and registered
            assert len(indices[block_id]) == 1 and bm.blocks[block_id].hash is not None
    assert bm.num_free_blocks == sum(1 for b in bm.blocks if b.ref_count == 0)
    assert bm.num_free_blocks + bm.num_used_blocks == bm.num_blocks
    assert bm.num_cached_blocks == sum(1 for b in bm.blocks if b.hash is not None)
    assert sched.num_running <= sched.config.max_num_seqs


def check_finished(s: Sequence, max_seq_len: int) -> None:
    for k in range(s.num_prompt_tokens, s.num_tokens):
        assert s.token_ids[k] == next_token(s.token_ids[:k])
    params = s.sampling_params
    if s.finish_reason == "stop":
        assert s.last_token_id in (EOS, *params.stop_token_ids) and s.num_completion_tokens > params.min_tokens
    elif s.finish_reason == "length":
        assert s.num_completion_tokens == params.max_tokens or s.num_tokens == max_seq_len


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunked, prefix_caching", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("ahead", [False, True], ids=["sync", "one-step-ahead"])
def test_random_workload_keeps_invariants_and_finishes(seed: int, chunked: bool, prefix_caching: bool,
                                                       ahead: bool) -> None:
    rng = random.Random(seed)
    sched, model = make(num_blocks=20, max_num_seqs=5, budget=16 if chunked else 64, max_model_len=64,
                        chunked=chunked, prefix_caching=prefix_caching)
    system_prompts = [[rng.randrange(3, 53) for _ in range(rng.randrange(0, 13))] for _ in range(3)]
    pending = []
    for _ in range(40):
        prompt = rng.choice(system_prompts) + [rng.randrange(3, 53) for _ in range(rng.randrange(1, 30))]
        pending.append(seq(prompt, max_tokens=rng.choice([None, 1, 5, 20, 40]), min_tokens=rng.randrange(0, 2),
                           stop_token_ids=rng.choice([[], [11]])))
    submitted, aborted = [], set()
    in_flight: tuple[ScheduledBatch, list[int | None]] | None = None
    for _ in range(3000):
        for _ in range(rng.randrange(0, 3)):
            if pending:
                submitted.append(pending.pop())
                sched.add(submitted[-1])
        if not pending and not sched.has_unfinished and in_flight is None:
            break
        batch = sched.schedule()
        check_invariants(sched)
        assert batch.num_tokens <= sched.config.max_num_batched_tokens
        sampled = model.execute(batch, pending_values(in_flight))
        for s in list(sched.running) + list(sched.waiting):
            if rng.random() < 0.01:
                sched.abort(s.request_id)
                aborted.add(s.seq_id)
        if not ahead:
            sched.update(batch, sampled)
        else:
            if in_flight is not None:
                sched.resolve(*in_flight)
            sched.update(batch, [None if t is None else PENDING_TOKEN for t in sampled])
            in_flight = (batch, sampled) if batch.seqs else None
        check_invariants(sched)
    assert not pending and not sched.has_unfinished, "the workload did not finish"
    assert len(submitted) == 40 and all(s.is_finished for s in submitted)
    for s in submitted:
        assert (s.finish_reason == "abort") == (s.seq_id in aborted)
        check_finished(s, sched.max_seq_len)
    assert_all_free(sched)
