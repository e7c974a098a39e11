"""Turns the sampled sequences' SamplingParams into the sampler's per-row tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..layers.sampler import SamplingBatch
from .device_copy import to_device
from .sequence import Sequence


def build_sampling_batch(seqs: list[Sequence], vocab_size: int, device: torch.device,
                         generator: Callable[[int, int], torch.Generator]) -> SamplingBatch:
    params = [seq.sampling_params for seq in seqs]
    temperatures = [0.0 if p.is_greedy else p.temperature for p in params]
    if all(t == 0.0 for t in temperatures):  # the common serving case: no filter tensors to build
        batch = SamplingBatch(temperatures=None, top_ks=None, top_ps=None, min_ps=None,
                              generators=[None] * len(seqs), all_greedy=True)
    else:
        batch = SamplingBatch(
            temperatures=to_device(temperatures, torch.float32, device),
            top_ks=_optional([p.top_k if p.top_k > 0 else vocab_size for p in params], vocab_size, torch.long, device),
            top_ps=_optional([p.top_p for p in params], 1.0, torch.float32, device),
            min_ps=_optional([p.min_p for p in params], 0.0, torch.float32, device),
            generators=[None if p.is_greedy or p.seed is None else generator(seq.seq_id, p.seed)
                        for seq, p in zip(seqs, params)],
            all_greedy=False,
        )
    if any(p.has_penalties for p in params):
        _add_penalties(batch, seqs, vocab_size, device)
    banned = [(row, sorted(p.all_stop_token_ids(p.eos_token_ids))) for row, (seq, p) in enumerate(zip(seqs, params))
              if seq.num_completion_tokens < p.min_tokens]
    batch.banned_token_ids = [(row, ids) for row, ids in banned if ids] or None
    wanted = [p.logprobs for p in params if p.logprobs is not None]
    batch.max_num_logprobs = max(wanted) if wanted else None
    return batch


def _optional(values: list, neutral: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """None when every row has the neutral value, so the sampler skips that filter."""
    if all(v == neutral for v in values):
        return None
    return to_device(values, dtype, device)


def _add_penalties(batch: SamplingBatch, seqs: list[Sequence], vocab_size: int, device: torch.device) -> None:
    rows = len(seqs)
    prompt_mask = torch.zeros((rows, vocab_size), dtype=torch.bool, device=device)
    counts = torch.zeros((rows, vocab_size), dtype=torch.int32, device=device)
    for row, seq in enumerate(seqs):
        prompt = to_device(seq.prompt_token_ids, torch.long, device)
        prompt_mask[row, prompt] = True
        output = seq.completion_token_ids
        if output:
            counts[row].index_add_(0, to_device(output, torch.long, device),
                                   torch.ones(len(output), dtype=torch.int32, device=device))
    params = [seq.sampling_params for seq in seqs]
    batch.prompt_mask, batch.output_counts = prompt_mask, counts
    batch.repetition_penalties = to_device([p.repetition_penalty for p in params], torch.float32, device)
    batch.frequency_penalties = to_device([p.frequency_penalty for p in params], torch.float32, device)
    batch.presence_penalties = to_device([p.presence_penalty for p in params], torch.float32, device)
