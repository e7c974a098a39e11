"""Compile at start-up the Triton kernel variants a step may launch, so no request waits on a compile.

A kernel is compiled once per variant, and the variant follows from the batch: the prefill tile
height follows the longest query, Triton specializes integer arguments that equal 1 or divide by
16 (the number of decodes ahead of the first prompt in a mixed batch, the number of tokens), and
the decode kernel's split count follows the number of decodes and the width of their block
table. Compiling one takes seconds, which a request caught behind it waits (measured in
``benchmarks/README.md``). ``warm_up`` runs the model's forward on throwaway batches that cover
each of these, every cache write skipped (slot -1) and every read from block 0, then the
sampler's greedy and random paths. Every rank of an instance runs the same batches in the same
order, so tensor-parallel collectives match; a later pipeline stage starts from zeros.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import torch

from ..layers.sampler import SamplingBatch
from .step_inputs import attention_metadata

if TYPE_CHECKING:
    from .model_runner import ModelRunner

log = logging.getLogger(__name__)
PREFILL_LENGTHS = (2, 3, 5, 8, 16, 17, 32, 64, 128, 256)  # tile heights up to the largest, odd and aligned counts
DECODES_AHEAD = (0, 1, 3)  # decodes before the prompt: a multiple of 16, one, neither
DECODE_BATCHES = (1, 3, 16)
# kernels/triton_attention.py's MIN_SPLIT_TOKENS and MAX_SPLITS (that module needs Triton; a GPU test
# checks they agree): the decode kernel takes one split per SPLIT_TOKENS of context, at most MAX_SPLITS.
SPLIT_TOKENS = 128
MAX_SPLITS = 64


@torch.inference_mode()
def warm_up(runner: ModelRunner) -> int:
    """Run every warm-up batch on ``runner``; how many ran."""
    started = time.perf_counter()
    budget = min(runner.config.max_num_batched_tokens, runner.max_model_len)
    batches = [[1] * ahead + [length] for length in PREFILL_LENGTHS for ahead in DECODES_AHEAD
               if ahead + length <= budget and length < runner.max_model_len]
    batches += [[1] * size for size in DECODE_BATCHES if size <= runner.config.max_num_seqs]
    for query_lens in batches:
        _forward(runner, query_lens, context=max(query_lens))
    contexts = [SPLIT_TOKENS * 2**k for k in range(int(math.log2(MAX_SPLITS)) + 1)
                if SPLIT_TOKENS * 2**k < runner.max_model_len]
    for context in contexts:  # each split count of the decode kernel
        _forward(runner, [1], context=context)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    log.info("warmed up %d batch shapes in %.1f s", len(batches) + len(contexts), time.perf_counter() - started)
    return len(batches) + len(contexts)


def _forward(runner: ModelRunner, query_lens: list[int], context: int) -> None:
    """One throwaway step: decodes (one token, ``context`` long) then, if any, a prompt of its own length."""
    device, block_size = runner.device, runner.block_size
    seq_lens = [context if n == 1 else n for n in query_lens]
    num_tokens = sum(query_lens)
    width = -(-max(seq_lens) // block_size)
    block_tables = torch.zeros((len(query_lens), width), dtype=torch.int32, device=device)
    slots = torch.full((num_tokens,), -1, dtype=torch.long, device=device)
    meta = attention_metadata(query_lens, seq_lens, block_tables, slots, device)
    positions = torch.cat([torch.arange(s - n, s, device=device) for n, s in zip(query_lens, seq_lens)])
    ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
    stage = runner.model.stage
    intermediate = None
    if not stage.is_first:
        hidden = torch.zeros((num_tokens, runner.model_config.hidden_size), dtype=runner.dtype, device=device)
        intermediate = (hidden, torch.zeros_like(hidden))
    out = runner.model(ids, positions, meta, intermediate)
    if stage.is_last:
        last = torch.tensor([sum(query_lens[:i + 1]) - 1 for i in range(len(query_lens))], device=device)
        _sample(runner, runner.model.compute_logits(out.index_select(0, last)))


def _sample(runner: ModelRunner, logits: torch.Tensor) -> None:
    rows = logits.shape[0]
    runner.sampler(logits, SamplingBatch(None, None, None, None, [None] * rows, all_greedy=True))
    temperatures = torch.ones(rows, device=logits.device)
    runner.sampler(logits, SamplingBatch(temperatures, None, None, None, [None] * rows, all_greedy=False))
