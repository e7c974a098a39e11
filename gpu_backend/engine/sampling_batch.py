"""The sampled rows' settings: described on the host (``SamplingPlan``), then turned into the
sampler's per-row tensors on whichever rank samples (``build_sampling_batch``).

The plan holds plain values only, so the driver of a sharded instance can send it to the ranks
that sample; every one of them builds the same tensors and, with the same seeds, draws the same
tokens.

A grammar's token bitmask is not in the plan: the plan is made before the step's forward pass, the
mask only while it runs (it needs the previous step's tokens, read back meanwhile). The plan says
which rows are constrained (``SamplingPlan.constrained_rows``); the mask, a host tensor of plain
int32 words, joins the batch last (``add_token_bitmask``), just before the sampler runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..layers.sampler import SamplingBatch
from .device_copy import tensor_to_device, to_device
from .sampling_params import SamplingParams
from .sequence import Sequence


@dataclass
class SampledRow:
    seq_id: int
    params: SamplingParams
    seed: int | None  # the request's seed; a sharded instance's driver gives unseeded random rows one
    num_completion_tokens: int
    prompt_token_ids: list[int] | None = None  # only with penalties: they count the tokens seen
    completion_token_ids: list[int] | None = None


@dataclass
class SamplingPlan:
    rows: list[SampledRow]

    @classmethod
    def of(cls, seqs: list[Sequence], seed_for: Callable[[Sequence], int | None]) -> SamplingPlan:
        """``seed_for``: the seed of a request that brought none (None: draw from the global generator)."""
        rows = []
        for seq in seqs:
            params = seq.sampling_params
            seed = params.seed if params.seed is not None else seed_for(seq)
            row = SampledRow(seq.seq_id, params, seed, seq.num_completion_tokens)
            if params.has_penalties:
                row.prompt_token_ids, row.completion_token_ids = seq.prompt_token_ids, seq.completion_token_ids
            rows.append(row)
        return cls(rows)

    @property
    def constrained_rows(self) -> list[int]:
        """Rows whose request has structured output: the sampler needs a token bitmask for them."""
        return [index for index, row in enumerate(self.rows) if row.params.structured is not None]


def build_sampling_batch(plan: SamplingPlan, vocab_size: int, device: torch.device,
                         generator: Callable[[int, int, int, int], torch.Generator]) -> SamplingBatch:
    """``generator(seq_id, seed, num_drawn, vocab_size)``: a seeded row's generator, past the draws
    of the ``num_drawn`` tokens it already has (sampled by another instance before a hand-off)."""
    params = [row.params for row in plan.rows]
    temperatures = [0.0 if p.is_greedy else p.temperature for p in params]
    if all(t == 0.0 for t in temperatures):  # the common serving case: no filter tensors to build
        batch = SamplingBatch(temperatures=None, top_ks=None, top_ps=None, min_ps=None,
                              generators=[None] * len(params), all_greedy=True)
    else:
        batch = SamplingBatch(
            temperatures=to_device(temperatures, torch.float32, device),
            top_ks=_optional([p.top_k if p.top_k > 0 else vocab_size for p in params], vocab_size, torch.long, device),
            top_ps=_optional([p.top_p for p in params], 1.0, torch.float32, device),
            min_ps=_optional([p.min_p for p in params], 0.0, torch.float32, device),
            generators=[None if row.params.is_greedy or row.seed is None
                        else generator(row.seq_id, row.seed, row.num_completion_tokens, vocab_size)
                        for row in plan.rows],
            all_greedy=False,
        )
    if any(p.has_penalties for p in params):
        _add_penalties(batch, plan.rows, vocab_size, device)
    banned = [(index, sorted(row.params.all_stop_token_ids(row.params.eos_token_ids)))
              for index, row in enumerate(plan.rows) if row.num_completion_tokens < row.params.min_tokens]
    batch.banned_token_ids = [(index, ids) for index, ids in banned if ids] or None
    biased = [(index, row.params.logit_bias) for index, row in enumerate(plan.rows) if row.params.logit_bias]
    if biased:
        batch.logit_bias = _logit_bias(biased, len(plan.rows), vocab_size, device)
    wanted = [p.logprobs for p in params if p.logprobs is not None]
    batch.max_num_logprobs = max(wanted) if wanted else None
    return batch


def add_token_bitmask(batch: SamplingBatch, bitmask: torch.Tensor | None, device: torch.device) -> None:
    """Give the batch its rows' token bitmask (host int32 ``[rows, words]``; None: no row is constrained)."""
    if bitmask is not None:
        batch.token_bitmask = bitmask if device.type == "cpu" else tensor_to_device(bitmask, device)


def _optional(values: list, neutral: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """None when every row has the neutral value, so the sampler skips that filter."""
    if all(v == neutral for v in values):
        return None
    return to_device(values, dtype, device)


def _logit_bias(biased: list[tuple[int, dict[int, float]]], num_rows: int, vocab_size: int,
                device: torch.device) -> torch.Tensor:
    """The rows' biases as one dense ``[rows, vocab]`` float32 tensor (zero where a row has none)."""
    rows = [index for index, bias in biased for _ in bias]
    token_ids = [token_id for _, bias in biased for token_id in bias]
    values = [value for _, bias in biased for value in bias.values()]
    dense = torch.zeros(num_rows * vocab_size, dtype=torch.float32)
    dense[torch.tensor(rows) * vocab_size + torch.tensor(token_ids)] = torch.tensor(values)
    return tensor_to_device(dense.view(num_rows, vocab_size), device)


def _add_penalties(batch: SamplingBatch, rows: list[SampledRow], vocab_size: int, device: torch.device) -> None:
    prompt_mask = torch.zeros((len(rows), vocab_size), dtype=torch.bool, device=device)
    counts = torch.zeros((len(rows), vocab_size), dtype=torch.int32, device=device)
    for index, row in enumerate(rows):
        if not row.params.has_penalties:
            continue
        prompt_mask[index, to_device(row.prompt_token_ids or [], torch.long, device)] = True
        output = row.completion_token_ids or []
        if output:
            counts[index].index_add_(0, to_device(output, torch.long, device),
                                     torch.ones(len(output), dtype=torch.int32, device=device))
    params = [row.params for row in rows]
    batch.prompt_mask, batch.output_counts = prompt_mask, counts
    batch.repetition_penalties = to_device([p.repetition_penalty for p in params], torch.float32, device)
    batch.frequency_penalties = to_device([p.frequency_penalty for p in params], torch.float32, device)
    batch.presence_penalties = to_device([p.presence_penalty for p in params], torch.float32, device)
