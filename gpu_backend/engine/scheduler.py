"""Picks each step's work: which sequences run and how many tokens each, within the token
budget, the sequence limit and the free KV blocks; applies the step's sampled tokens.

Policy: running sequences first, in arrival order (1 token for a decode, the next chunk for
a prompt); then waiting ones in FCFS order while blocks and budget last. When blocks run out,
the latest-arrived running sequence is preempted by recompute: its blocks are freed and it
goes back to the front of the waiting queue (its prefix-cached blocks usually survive).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import InvalidRequestError, PromptTooLongError
from .block_manager import BlockManager
from .sequence import PENDING_TOKEN, FinishReason, Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool = True
    # False in a pipeline: a sequence whose last token is still on its way from the last stage
    # sits out until it arrives (the first stage, which needs it as input, does not have it).
    schedule_pending: bool = True

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            # Without chunking, a whole prompt must fit in one step's budget.
            raise ValueError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_model_len "
                             f"({self.max_model_len}) when chunked prefill is off")


@dataclass
class ScheduledBatch:
    """One step: ``seqs[i]`` computes ``token_ids[num_computed_tokens : num_computed_tokens + num_new_tokens[i]]``.

    ``num_tokens`` and ``is_decode_only`` are fixed when the batch is built (before ``update``).
    """

    seqs: list[Sequence]
    num_new_tokens: list[int]
    preempted: list[Sequence] = field(default_factory=list)
    num_tokens: int = field(init=False)
    is_decode_only: bool = field(init=False)

    def __post_init__(self) -> None:
        self.num_tokens = sum(self.num_new_tokens)
        self.is_decode_only = bool(self.seqs) and all(
            n == 1 and not seq.is_prefill for seq, n in zip(self.seqs, self.num_new_tokens, strict=True))

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    def without_finished(self) -> ScheduledBatch:
        """The batch less the sequences that ended since it was scheduled (their blocks are freed)."""
        kept = [(seq, count) for seq, count in zip(self.seqs, self.num_new_tokens) if not seq.is_finished]
        return ScheduledBatch([seq for seq, _ in kept], [count for _, count in kept], self.preempted)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager,
                 eos_token_ids: Iterable[int] = ()) -> None:
        self.config = config
        self.block_manager = block_manager
        self.eos_token_ids = frozenset(eos_token_ids)
        # A sequence that fills the whole KV cache can never run again: it ends with "length".
        self.max_seq_len = min(config.max_model_len, block_manager.num_blocks * block_manager.block_size)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # sorted by arrival_order
        self.reserved: dict[int, Sequence] = {}  # seq_id -> a sequence whose prompt's KV is on its way
        self._by_request_id: dict[str, Sequence] = {}
        self._by_seq_id: dict[int, Sequence] = {}
        self.num_preemptions = 0  # total so far, for metrics

    # -- intake ------------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        self._register(seq)
        self.waiting.append(seq)

    def _register(self, seq: Sequence) -> None:
        self._check_fits(seq)
        if seq.status is not SequenceStatus.WAITING or seq.block_table:
            raise InvalidRequestError(f"{seq} was already scheduled; create a new Sequence")
        if seq.request_id in self._by_request_id or seq.seq_id in self._by_seq_id:
            raise InvalidRequestError(f"request id {seq.request_id!r} (seq_id {seq.seq_id}) is already running")
        self._by_request_id[seq.request_id] = seq
        self._by_seq_id[seq.seq_id] = seq

    # -- prompts computed elsewhere (a prefill instance's KV handed to this decode instance) ----------

    def reserve(self, seq: Sequence) -> bool:
        """Give ``seq`` blocks for its prompt now, reusing cached prefix blocks, and keep it out of
        scheduling until ``admit``; False (nothing taken) when the blocks are not free."""
        if not self.block_manager.can_allocate(seq):
            self._check_fits(seq)  # a prompt that can never fit is an error, not a wait
            return False
        self._register(seq)
        self.block_manager.allocate(seq)
        self.reserved[seq.seq_id] = seq
        return True

    def admit(self, seq: Sequence, first_token: int) -> FinishReason | None:
        """The prompt's KV is in ``seq``'s blocks and its first token was sampled elsewhere: it joins
        the running batch to decode from there (or ends at once, by that token)."""
        del self.reserved[seq.seq_id]
        seq.num_computed_tokens = seq.num_tokens
        seq.append_token(first_token)
        seq.status = SequenceStatus.RUNNING
        bisect.insort(self.running, seq, key=lambda s: s.arrival_order)
        self.block_manager.cache_computed_blocks(seq)
        reason = self._finish_reason(seq, first_token)
        if reason is not None:
            self.finish(seq, reason)
        return reason

    def _check_fits(self, seq: Sequence) -> None:
        needed = seq.num_tokens + 1  # the prompt and at least one new token
        if needed > self.config.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {seq.num_tokens} tokens; with one new token that is {needed}, "
                f"more than max_model_len={self.config.max_model_len}")
        bm = self.block_manager
        if bm.blocks_needed(needed) > bm.num_blocks:
            raise PromptTooLongError(
                f"the prompt has {seq.num_tokens} tokens; with one new token it needs "
                f"{bm.blocks_needed(needed)} KV blocks of {bm.block_size} tokens, but the whole cache "
                f"has {bm.num_blocks} blocks ({bm.num_blocks * bm.block_size} tokens)")

    # -- one step ----------------------------------------------------------------------------

    def schedule(self, max_seqs: int | None = None) -> ScheduledBatch:
        """``max_seqs``: at most this many sequences in the batch (a pipeline's micro-batch)."""
        seqs: list[Sequence] = []
        counts: list[int] = []
        preempted: list[Sequence] = []
        limit = max_seqs or self.config.max_num_seqs
        budget = self._schedule_running(seqs, counts, preempted, self.config.max_num_batched_tokens, limit)
        if not preempted:  # blocks are short: admitting more would only thrash
            self._schedule_waiting(seqs, counts, budget, limit)
        return ScheduledBatch(seqs, counts, preempted)

    def _schedule_running(self, seqs: list[Sequence], counts: list[int], preempted: list[Sequence],
                          budget: int, limit: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0 and len(seqs) < limit:
            seq = self.running[index]
            index += 1
            if seq.has_pending_token and not self.config.schedule_pending:
                continue
            count = self._chunk_size(seq.num_uncomputed_tokens, budget)
            if count == 0:
                continue
            while not self.block_manager.can_append(seq, count):
                victim = self.running.pop()  # latest arrival not scheduled yet (maybe seq)
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.append_slots(seq, count)
                seqs.append(seq)
                counts.append(count)
                budget -= count
        return budget

    def _schedule_waiting(self, seqs: list[Sequence], counts: list[int], budget: int, limit: int) -> None:
        bm = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and len(seqs) < limit:
            seq = self.waiting[0]
            if seq.has_pending_token and not self.config.schedule_pending:
                break  # preempted while its token was in flight: it needs that token first
            if not self._fits_budget(seq, budget) or not bm.can_allocate(seq):
                break  # FCFS: nobody overtakes the head of the queue
            self.waiting.popleft()
            bm.allocate(seq)
            count = self._chunk_size(seq.num_uncomputed_tokens, budget)
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: s.arrival_order)
            seqs.append(seq)
            counts.append(count)
            budget -= count

    def _fits_budget(self, seq: Sequence, budget: int) -> bool:
        if self.config.enable_chunked_prefill:
            return True
        return seq.num_tokens - self.block_manager.num_prefix_hit_tokens(seq) <= budget

    def _chunk_size(self, num_uncomputed: int, budget: int) -> int:
        if num_uncomputed <= budget or self.config.enable_chunked_prefill:
            return min(num_uncomputed, budget)
        return 0

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    # -- results -----------------------------------------------------------------------------

    def update(self, batch: ScheduledBatch, sampled: list[int | None]) -> list[Sequence]:
        """Apply one executed step; returns the sequences that finished in it (already freed).

        ``sampled[i]`` is the token sampled for ``batch.seqs[i]``; it is read only where the
        chunk reached the end of the sequence, and must not be None there. It may be
        ``PENDING_TOKEN`` while the real token is still on the device: the sequence then ends
        here only by length, and ``resolve`` fills the token in (and checks it) later.
        """
        if len(sampled) != len(batch.seqs):
            raise ValueError(f"got {len(sampled)} sampled tokens for a batch of {len(batch.seqs)}")
        finished: list[Sequence] = []
        for seq, count, token_id in zip(batch.seqs, batch.num_new_tokens, sampled, strict=True):
            if seq.is_finished:  # aborted or stopped while the step ran
                continue
            seq.num_computed_tokens += count
            reason = None
            if seq.num_computed_tokens == seq.num_tokens:
                if token_id is None:
                    raise ValueError(f"{seq} reached its end this step but no token was sampled for it")
                if token_id == PENDING_TOKEN:
                    seq.append_pending_token()
                else:
                    seq.append_token(token_id)
                reason = self._finish_reason(seq, token_id)
            # Finished sequences register too: their blocks stay reusable (e.g. the next chat turn).
            self.block_manager.cache_computed_blocks(seq)
            if reason is not None:
                self._release(seq, reason)
                finished.append(seq)
        if finished:
            self.running = [seq for seq in self.running if not seq.is_finished]
        return finished

    def resolve(self, batch: ScheduledBatch, sampled: list[int | None]) -> list[Sequence]:
        """Fill in the tokens that ``update`` left pending; returns the sequences they belong to.

        A stop token ends its sequence here (freeing its blocks; it may be running or, if it was
        preempted meanwhile, waiting). A sequence that already ended by length in ``update``
        ends with "stop" instead when its last token is a stop token, as it would have then.
        An aborted sequence dropped its pending token and is skipped.
        """
        resolved: list[Sequence] = []
        for seq, token_id in zip(batch.seqs, sampled, strict=True):
            if not seq.has_pending_token or token_id is None:  # none sampled, or aborted since
                continue
            seq.resolve_pending_token(token_id)
            if self._is_stop(seq, token_id):
                if seq.is_finished:
                    seq.finish_reason = "stop"
                else:
                    self.finish(seq, "stop")
            resolved.append(seq)
        return resolved

    def _finish_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        if self._is_stop(seq, token_id):
            return "stop"
        params = seq.sampling_params
        if params.max_tokens is not None and seq.num_completion_tokens >= params.max_tokens:
            return "length"
        if seq.num_tokens >= self.max_seq_len:
            return "length"
        return None

    def _is_stop(self, seq: Sequence, token_id: int) -> bool:
        params = seq.sampling_params
        return seq.num_completion_tokens > params.min_tokens and params.is_stop_token(token_id, self.eos_token_ids)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End ``seq`` now (a stop string found by the detokenizer) and free its blocks."""
        if seq.is_finished or self._by_seq_id.get(seq.seq_id) is not seq:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif self.reserved.pop(seq.seq_id, None) is None:
            self.waiting.remove(seq)
        self._release(seq, reason)

    def abort(self, target: Sequence | int | str) -> Sequence | None:
        """Finish a sequence (given itself, its seq_id or its request_id) with ``finish_reason="abort"``.

        Returns it, or None if it is unknown here or already finished.
        """
        if isinstance(target, Sequence):
            target = target.seq_id
        lookup = self._by_request_id if isinstance(target, str) else self._by_seq_id
        seq = lookup.get(target)
        if seq is None:
            return None
        self.finish(seq, "abort")
        seq.drop_pending_token()  # sampled by a step still on the device; never delivered
        return seq

    def _release(self, seq: Sequence, reason: FinishReason) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if not seq.holds_blocks or reason == "abort":
            self.block_manager.free(seq)
        self._by_request_id.pop(seq.request_id, None)
        self._by_seq_id.pop(seq.seq_id, None)

    # -- load --------------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting_prompt_tokens(self) -> int:
        """Tokens the waiting queue still has to prefill (preempted ones count their recompute)."""
        return sum(seq.num_tokens for seq in self.waiting)
