"""One step's inputs as plain host values: what every rank of an instance needs to run the same step.

The driver builds a ``StepInputs`` from the scheduled sequences (``plan_step``); each rank turns
it into device tensors (``device_inputs``). Nothing in it refers to a ``Sequence``, so it pickles
small and a rank that holds no scheduler can run it. Rows are in model order: one-token rows
first, so the attention kernels serve that prefix with the decode kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from ..layers.attention import AttentionMetadata
from .device_copy import tensor_to_device, to_device
from .sampling_batch import SamplingPlan
from .sequence import Sequence


@dataclass
class StepInputs:
    seq_ids: list[int]  # per row of the batch, in the scheduler's order
    order: list[int]  # model row -> batch row
    input_ids: list[int]  # flat, model order; a pending token's place holds PENDING_TOKEN
    positions: list[int]
    slot_mapping: list[int]
    query_lens: list[int]  # per model row
    seq_lens: list[int]
    block_tables: torch.Tensor  # [rows, widest table] int32, host
    pending_at: list[int]  # flat input index <- ...
    pending_from: list[int]  # ... row of the previous step's sampled tokens (device)
    sample_rows: list[int]  # model rows whose chunk ends the sequence, in batch order
    sampling: SamplingPlan | None  # for the sampled rows, in the same order

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def sampled_rows(self) -> list[int]:
        """Batch rows that get a token, in the order of the sampler's output."""
        return [self.order[row] for row in self.sample_rows]

    def last_token_indices(self) -> list[int]:
        """Index (in the flat token list) of the last token of each sampled row."""
        ends, total = [], 0
        for count in self.query_lens:
            total += count
            ends.append(total - 1)
        return [ends[row] for row in self.sample_rows]


def plan_step(seqs: Seq[Sequence], counts: Seq[int], gather_block_tables: Callable[[list[Sequence]], torch.Tensor],
              block_size: int, previous_rows: dict[int, int]) -> StepInputs:
    """The inputs for ``counts[i]`` new tokens of ``seqs[i]`` (the scheduler's order); sampling is
    added by the caller for the rows in ``sampled_rows``.

    ``previous_rows``: seq_id -> row of the previous step's sampled tokens, where a pending last
    token is read from on the device."""
    order = sorted(range(len(seqs)), key=lambda row: counts[row] != 1)
    ordered = [seqs[row] for row in order]
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_lens, seq_lens, sample_rows = [], [], []
    pending_at, pending_from = [], []
    for row, seq in enumerate(ordered):
        count = counts[order[row]]
        start, end = seq.num_computed_tokens, seq.num_computed_tokens + count
        if seq.has_pending_token and end == seq.num_tokens:
            if seq.seq_id not in previous_rows:
                raise RuntimeError(f"{seq} has a pending token that the previous step did not sample")
            pending_at.append(len(input_ids) + count - 1)
            pending_from.append(previous_rows[seq.seq_id])
        input_ids.extend(seq.token_ids[start:end])
        positions.extend(range(start, end))
        slots.extend(_slots(seq.block_table, start, end, block_size))
        query_lens.append(count)
        seq_lens.append(end)
        if end == seq.num_tokens:
            sample_rows.append(row)
    sample_rows.sort(key=order.__getitem__)  # sample in the batch's order: the sampler's rows line up with it
    return StepInputs([seq.seq_id for seq in seqs], order, input_ids, positions, slots, query_lens, seq_lens,
                      gather_block_tables(ordered), pending_at, pending_from, sample_rows, None)


def device_inputs(inputs: StepInputs, previous_token_ids: torch.Tensor | None, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """input ids, positions and attention metadata on the device, in one host-to-device copy each."""
    num_tokens, num_pending = inputs.num_tokens, len(inputs.pending_at)
    # Each part starts 16-byte aligned whatever the batch: Triton compiles a kernel again for a
    # pointer of another alignment, and a request would wait on that compile.
    pad = [0] * (num_tokens % 2)
    stride = num_tokens + len(pad)
    longs = to_device(inputs.input_ids + pad + inputs.positions + pad + inputs.slot_mapping + pad
                      + inputs.pending_at + inputs.pending_from, torch.long, device)
    ids = longs[:num_tokens]
    if num_pending:
        if previous_token_ids is None:
            raise RuntimeError("a step reads pending tokens but the previous step sampled none")
        if num_pending == num_tokens and inputs.pending_from == list(range(num_tokens)):
            ids = previous_token_ids[:num_tokens]  # steady decode: the last step's tokens, in order
        else:
            tail = longs[3 * stride:]
            ids = ids.index_copy(0, tail[:num_pending], previous_token_ids.index_select(0, tail[num_pending:]))
    meta = attention_metadata(inputs.query_lens, inputs.seq_lens, tensor_to_device(inputs.block_tables, device),
                              longs[2 * stride:2 * stride + num_tokens], device)
    return ids, longs[stride:stride + num_tokens], meta


def attention_metadata(query_lens: Seq[int], seq_lens: Seq[int], block_tables: torch.Tensor,
                       slot_mapping: torch.Tensor, device: torch.device) -> AttentionMetadata:
    num_seqs = len(seq_lens)
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    starts += [0] * (-len(starts) % 4)  # seq_lens starts 16-byte aligned (see device_inputs)
    ints = to_device(starts + list(seq_lens), torch.int32, device)
    return AttentionMetadata(
        slot_mapping=slot_mapping,
        query_start_loc=ints[: num_seqs + 1],
        seq_lens=ints[len(starts):],
        block_tables=block_tables,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        is_decode_only=max(query_lens) == 1,
        num_decodes=next((i for i, n in enumerate(query_lens) if n != 1), num_seqs),
    )


def _slots(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of positions start..end-1, one range per block rather than one step per token."""
    slots: list[int] = []
    position = start
    while position < end:
        block = position // block_size
        stop = min(end, (block + 1) * block_size)
        base = block_table[block] * block_size - block * block_size
        slots.extend(range(base + position, base + stop))
        position = stop
    return slots
