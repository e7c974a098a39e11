"""The scheduler tests' stand-in for the model runner, and helpers shared by those tests.

A fake model writes (position, token) into a fake paged KV cache through each block table,
checks that every earlier position reads back right (so a wrong block table or a bad prefix hit
fails loudly), and samples a token fixed by the sequence's tokens.
"""

from __future__ import annotations

from collections.abc import Callable

from gpu_backend.engine.block_manager import BlockManager
from gpu_backend.engine.sampling_params import SamplingParams
from gpu_backend.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from gpu_backend.engine.sequence import PENDING_TOKEN, Sequence

BS = 4
EOS = 2


def next_token(token_ids: list[int]) -> int:
    """The fake model's choice: depends only on the tokens so far (so recompute repeats it)."""
    return (sum(token_ids[-3:]) * 31 + len(token_ids)) % 50 + 3


class FakeModel:
    def __init__(self, bm: BlockManager, sample: Callable[[list[int]], int] = next_token) -> None:
        self.bm, self.sample = bm, sample
        self.kv: dict[int, tuple[int, int]] = {}  # slot -> (position, token)

    def slot(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // BS] * BS + position % BS

    def execute(self, batch: ScheduledBatch, previous: dict[int, int] | None = None) -> list[int | None]:
        """One step; `previous` maps seq_id -> the token still pending as that sequence's last
        (the runner reads it from the previous step's output on the device)."""
        inputs = {seq.seq_id: self._inputs(seq, previous or {}) for seq in batch.seqs}
        for seq, count in zip(batch.seqs, batch.num_new_tokens):
            for position in range(seq.num_computed_tokens, seq.num_computed_tokens + count):
                block = self.bm.blocks[seq.block_table[position // BS]]
                assert block.ref_count == 1 and block.hash is None, "write into a shared or cached block"
                self.kv[self.slot(seq, position)] = (position, inputs[seq.seq_id][position])
        out: list[int | None] = []
        for seq, count in zip(batch.seqs, batch.num_new_tokens):
            end, tokens = seq.num_computed_tokens + count, inputs[seq.seq_id]
            for position in range(end):
                assert self.kv[self.slot(seq, position)] == (position, tokens[position])
            out.append(self.sample(tokens) if end == seq.num_tokens else None)
        return out

    @staticmethod
    def _inputs(seq: Sequence, previous: dict[int, int]) -> list[int]:
        if not seq.has_pending_token:
            return seq.token_ids
        return seq.token_ids[:-1] + [previous[seq.seq_id]]


def make(num_blocks: int = 64, max_num_seqs: int = 8, budget: int = 64, max_model_len: int = 64,
         chunked: bool = True, prefix_caching: bool = True, sample: Callable[[list[int]], int] = next_token,
         ) -> tuple[Scheduler, FakeModel]:
    bm = BlockManager(num_blocks, BS, enable_prefix_caching=prefix_caching)
    config = SchedulerConfig(max_num_seqs, budget, max_model_len, enable_chunked_prefill=chunked)
    return Scheduler(config, bm, eos_token_ids=[EOS]), FakeModel(bm, sample)


def step(sched: Scheduler, model: FakeModel) -> tuple[ScheduledBatch, list[Sequence]]:
    batch = sched.schedule()
    return batch, sched.update(batch, model.execute(batch))


def run_all(sched: Scheduler, model: FakeModel, max_steps: int = 500) -> list[ScheduledBatch]:
    batches = []
    while sched.has_unfinished:
        assert len(batches) < max_steps, "scheduler made no progress"
        batches.append(step(sched, model)[0])
    return batches


def seq(prompt: list[int] | range, **params) -> Sequence:
    return Sequence(list(prompt), SamplingParams(**params))


def reference(prompt: list[int], num_new: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(num_new):
        tokens.append(next_token(tokens))
    return tokens[len(prompt):]


def assert_all_free(sched: Scheduler) -> None:
    bm = sched.block_manager
    assert bm.num_free_blocks == bm.num_blocks and all(b.ref_count == 0 for b in bm.blocks)
    assert not sched.has_unfinished and sched.num_running == sched.num_waiting == 0


def pending_values(in_flight: tuple[ScheduledBatch, list[int | None]] | None) -> dict[int, int]:
    if in_flight is None:
        return {}
    batch, sampled = in_flight
    return {s.seq_id: token for s, token in zip(batch.seqs, sampled) if token is not None}


def step_ahead(sched: Scheduler, model: FakeModel, in_flight: tuple[ScheduledBatch, list[int | None]] | None
               ) -> tuple[ScheduledBatch, list[int | None]]:
    """The engine's order: schedule and run batch k, resolve batch k-1, apply batch k as pending."""
    batch = sched.schedule()
    sampled = model.execute(batch, pending_values(in_flight))
    if in_flight is not None:
        sched.resolve(*in_flight)
    sched.update(batch, [None if token is None else PENDING_TOKEN for token in sampled])
    return batch, sampled
