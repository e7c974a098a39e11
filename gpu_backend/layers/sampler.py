"""From logits to next tokens: a grammar's token bitmask, penalties, temperature, top-k / top-p / min-p,
seeded sampling, logprobs.

Random rows sample with the exponential race (``argmax(p / q)``, ``q ~ Exp(1)``), which draws
exactly the categorical distribution ``p`` and lets a request with a seed draw its noise from its
own generator: the same seed gives the same tokens whatever else is in the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..kernels import reference


@dataclass
class SamplingBatch:
    """Per-row sampling settings as tensors on the logits' device; built by the model runner."""

    temperatures: torch.Tensor | None  # [B] float32, 0 = greedy; None when every row is greedy
    top_ks: torch.Tensor | None  # [B] int64, vocab size = off; None when no row uses it
    top_ps: torch.Tensor | None  # [B] float32
    min_ps: torch.Tensor | None  # [B] float32
    generators: list[torch.Generator | None]  # per row: a seeded request's own generator
    all_greedy: bool
    repetition_penalties: torch.Tensor | None = None  # [B]; None when no row has any penalty
    frequency_penalties: torch.Tensor | None = None
    presence_penalties: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None  # [B, V] bool: token occurs in the prompt
    output_counts: torch.Tensor | None = None  # [B, V] int: occurrences among generated tokens
    max_num_logprobs: int | None = None  # top-N logprobs wanted by some row
    banned_token_ids: list[tuple[int, list[int]]] | None = None  # (row, ids): stop tokens before min_tokens
    # [B, ceil(V'/32)] int32, V' >= V: bit t % 32 of word t // 32 clear = token t not allowed (a grammar's
    # mask; rows without a constraint are all ones). None when no row of the batch is constrained.
    token_bitmask: torch.Tensor | None = None
    logit_bias: torch.Tensor | None = None  # [B, V] float32 added to the logits; None when no row has one


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None = None  # [B] logprob of the chosen token
    top_logprobs: torch.Tensor | None = None  # [B, N]
    top_token_ids: torch.Tensor | None = None  # [B, N]


class Sampler:
    def __init__(self, argmax: Callable[[torch.Tensor], torch.Tensor] = reference.argmax,
                 apply_bitmask: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> None:
        self.argmax = argmax  # a backend's `argmax` kernel (Kernels.argmax)
        self.apply_bitmask = apply_bitmask or apply_token_bitmask  # in place; a fused kernel where one helps

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        if _is_plain_greedy(batch):  # the usual decode step: no float copy, one argmax kernel
            return SamplerOutput(self.argmax(logits))
        logits = logits.float()
        if batch.logit_bias is not None:  # first: a bias moves the logits the masks and filters then see
            logits += batch.logit_bias
        if batch.banned_token_ids:
            for row, token_ids in batch.banned_token_ids:
                logits[row, token_ids] = float("-inf")
        if batch.token_bitmask is not None:  # before penalties and filters: they see only allowed tokens
            self.apply_bitmask(logits, batch.token_bitmask)
        if batch.repetition_penalties is not None:
            logits = apply_penalties(logits, batch)
        if batch.all_greedy:
            token_ids = logits.argmax(dim=-1)
        else:
            token_ids = self._sample(logits, batch)
        if batch.max_num_logprobs is None:
            return SamplerOutput(token_ids)
        logprobs = torch.log_softmax(logits, dim=-1)
        top = logprobs.topk(batch.max_num_logprobs, dim=-1) if batch.max_num_logprobs > 0 else None
        return SamplerOutput(
            token_ids,
            logprobs.gather(-1, token_ids[:, None]).squeeze(-1),
            top.values if top is not None else None,
            top.indices if top is not None else None,
        )

    def _sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        assert batch.temperatures is not None
        greedy = batch.temperatures == 0
        scaled = logits / torch.where(greedy, 1.0, batch.temperatures)[:, None]
        scaled = apply_top_k_top_p_min_p(scaled, batch.top_ks, batch.top_ps, batch.min_ps)
        probs = torch.softmax(scaled, dim=-1)
        noise = torch.empty_like(probs).exponential_()
        for row, generator in enumerate(batch.generators):
            if generator is not None:
                noise[row].exponential_(generator=generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(greedy, logits.argmax(dim=-1), sampled)


def skip_draws(generator: torch.Generator, num_draws: int, vocab_size: int) -> None:
    """Advance a seeded row's generator past ``num_draws`` sampled tokens, as ``_sample`` draws
    them (one row of ``vocab_size`` exponentials each): a request handed over from another instance
    goes on with the noise it would have had there."""
    for _ in range(num_draws):
        torch.empty(vocab_size, dtype=torch.float32, device=generator.device).exponential_(generator=generator)


def _is_plain_greedy(batch: SamplingBatch) -> bool:
    """Every row greedy and nothing that needs the float32 logits: no bans, masks, biases, penalties or logprobs."""
    return (batch.all_greedy and not batch.banned_token_ids and batch.repetition_penalties is None
            and batch.max_num_logprobs is None and batch.token_bitmask is None and batch.logit_bias is None)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """In place: -inf wherever a row's bit is clear (the plain-torch twin of llguidance's fused kernel).

    ``logits`` [B, V] float; ``bitmask`` [B, W] int32 with 32 * W >= V (extra bits are ignored)."""
    vocab = logits.shape[-1]
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask[:, :, None] >> shifts) & 1).flatten(1)[:, :vocab]
    logits.masked_fill_(allowed == 0, float("-inf"))


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Repetition over prompt and output (divide positive, multiply negative logits), then
    OpenAI-style frequency and presence penalties over the generated tokens only."""
    assert batch.output_counts is not None and batch.prompt_mask is not None
    counts = batch.output_counts
    # A masked (-inf) logit stays masked: times a penalty that float32 rounds to 0 it would be NaN.
    seen = (batch.prompt_mask | (counts > 0)) & torch.isfinite(logits)
    penalty = batch.repetition_penalties[:, None]  # type: ignore[index]
    logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    logits = logits.clamp(max=torch.finfo(logits.dtype).max)  # a huge boost must not reach +inf (softmax NaN)
    logits = logits - batch.frequency_penalties[:, None] * counts  # type: ignore[index]
    return logits - batch.presence_penalties[:, None] * (counts > 0)  # type: ignore[index]


def apply_top_k_top_p_min_p(logits: torch.Tensor, top_ks: torch.Tensor | None, top_ps: torch.Tensor | None,
                            min_ps: torch.Tensor | None) -> torch.Tensor:
    """Mask (to -inf) the tokens each row's filters drop; at least the most likely token survives."""
    if min_ps is not None:
        probs = torch.softmax(logits, dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True) * min_ps[:, None]
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if top_ks is None and top_ps is None:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if top_ks is not None:
        drop |= ranks >= top_ks[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    if top_ps is not None:
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop |= (mass_before > top_ps[:, None]) & (ranks > 0)
    return logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
