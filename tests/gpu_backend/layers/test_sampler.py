"""The sampler on hand-made logits: filters, penalties, seeds and the distribution it draws from."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from gpu_backend.kernels import get_kernels
from gpu_backend.layers.sampler import (
    Sampler,
    SamplingBatch,
    apply_penalties,
    apply_top_k_top_p_min_p,
    skip_draws,
)


def batch(rows: int, *, temperature: float = 1.0, generators: list | None = None, **tensors) -> SamplingBatch:
    return SamplingBatch(
        temperatures=torch.full((rows,), temperature),
        top_ks=tensors.get("top_ks"), top_ps=tensors.get("top_ps"), min_ps=tensors.get("min_ps"),
        generators=generators or [None] * rows, all_greedy=temperature == 0.0,
    )


def test_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 4.9, 0.0]])
    assert Sampler()(logits, batch(2, temperature=0.0)).token_ids.tolist() == [1, 0]


class RecordingArgmax:
    """An argmax op that records the logits it was handed."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self.calls.append(logits)
        return torch.argmax(logits.float(), dim=-1)


def test_plain_greedy_hands_the_raw_logits_to_the_argmax_op() -> None:
    logits = torch.tensor([[0.5, 2.0, 2.0, -1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    argmax = RecordingArgmax()
    assert Sampler(argmax=argmax)(logits, batch(2, temperature=0.0)).token_ids.tolist() == [1, 0]
    assert len(argmax.calls) == 1 and argmax.calls[0] is logits  # no float32 copy first
    assert Sampler()(logits, batch(2, temperature=0.0)).token_ids.tolist() == [1, 0]


def test_greedy_with_bans_penalties_or_logprobs_keeps_the_float_path() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0]], dtype=torch.bfloat16)
    banned, penalised, with_logprobs = (batch(1, temperature=0.0) for _ in range(3))
    banned.banned_token_ids = [(0, [1])]
    penalised.repetition_penalties, penalised.frequency_penalties = torch.tensor([1.0]), torch.tensor([2.0])
    penalised.presence_penalties = torch.tensor([0.0])
    penalised.prompt_mask, penalised.output_counts = torch.zeros(1, 3, dtype=torch.bool), torch.tensor([[0, 1, 0]])
    with_logprobs.max_num_logprobs = 0
    argmax = RecordingArgmax()
    sampler = Sampler(argmax=argmax)
    assert sampler(logits, banned).token_ids.tolist() == [2]
    assert sampler(logits, penalised).token_ids.tolist() == [2]  # 3 - 2 * 1 < 2
    out = sampler(logits, with_logprobs)
    assert out.token_ids.tolist() == [1] and out.logprobs is not None
    assert argmax.calls == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                    reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_greedy_with_the_triton_argmax_equals_torch(dtype: torch.dtype) -> None:
    logits = torch.randn(8, 128_256, device="cuda").to(dtype)
    logits[3, [77_000, 4_000]] = 50.0  # a tie: the first index wins
    greedy = batch(8, temperature=0.0)
    got = Sampler(argmax=get_kernels("triton").argmax)(logits, greedy).token_ids
    assert torch.equal(got, Sampler()(logits.float(), greedy).token_ids) and got[3] == 4_000


def test_mixed_greedy_and_random_rows() -> None:
    logits = torch.tensor([[0.0, 10.0, 0.0], [0.0, 0.0, 0.0]])
    b = batch(2)
    b.temperatures = torch.tensor([0.0, 1.0])
    out = Sampler()(logits, b).token_ids
    assert out[0] == 1


def test_top_k_keeps_the_k_largest() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    kept = apply_top_k_top_p_min_p(logits, torch.tensor([2]), None, None)
    assert torch.isinf(kept[0, [0, 3]]).all() and torch.isfinite(kept[0, [1, 2]]).all()


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = apply_top_k_top_p_min_p(probs.log(), None, torch.tensor([0.7]), None)
    assert torch.isfinite(kept[0, :2]).all() and torch.isinf(kept[0, 2:]).all()
    only_top = apply_top_k_top_p_min_p(probs.log(), None, torch.tensor([0.01]), None)
    assert torch.isfinite(only_top[0, 0]) and torch.isinf(only_top[0, 1:]).all()


def test_min_p_drops_tokens_below_a_fraction_of_the_best() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    kept = apply_top_k_top_p_min_p(probs.log(), None, None, torch.tensor([0.4]))
    assert torch.isfinite(kept[0, :2]).all() and torch.isinf(kept[0, 2])


def test_penalties() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 1.0]])
    b = batch(1)
    b.repetition_penalties = torch.tensor([2.0])
    b.frequency_penalties = torch.tensor([0.5])
    b.presence_penalties = torch.tensor([0.25])
    b.prompt_mask = torch.tensor([[True, True, False, False]])
    b.output_counts = torch.tensor([[0, 0, 2, 0]])
    out = apply_penalties(logits, b)
    # token 0: prompt, positive -> /2; token 1: prompt, negative -> *2; token 2: output twice ->
    # /2, then -0.5*2 and -0.25; token 3: untouched.
    assert torch.allclose(out, torch.tensor([[1.0, -4.0, 0.5 - 1.0 - 0.25, 1.0]]))


def test_same_seed_same_tokens_whatever_the_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 50)

    def draw(rows: torch.Tensor, seed: int) -> int:
        generators = [torch.Generator().manual_seed(seed)] + [None] * (rows.shape[0] - 1)
        return int(Sampler()(rows, batch(rows.shape[0], generators=generators)).token_ids[0])

    assert draw(logits[:1], 7) == draw(logits, 7)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    seq1 = [int(Sampler()(logits[:1], batch(1, generators=[g1])).token_ids[0]) for _ in range(20)]
    seq2 = [int(Sampler()(logits, batch(3, generators=[g2, None, None])).token_ids[0]) for _ in range(20)]
    assert seq1 == seq2
    assert len(set(seq1)) > 1  # it does sample


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_a_generator_past_skipped_draws_goes_on_as_the_one_that_made_them(device: str) -> None:
    """A request handed from a prefill instance (which drew its first tokens) to a decode instance."""
    torch.manual_seed(0)
    steps = [torch.randn(3, 97, device=device) for _ in range(6)]  # an awkward vocabulary size
    sample = Sampler()

    def tokens(generator: torch.Generator, logits: list[torch.Tensor]) -> list[int]:
        settings = SamplingBatch(torch.ones(3, device=device), None, None, None, [None, generator, None], False)
        return [int(sample(rows, settings).token_ids[1]) for rows in logits]

    whole = tokens(torch.Generator(device).manual_seed(11), steps)
    handed_over = torch.Generator(device).manual_seed(11)
    skip_draws(handed_over, 2, 97)
    assert tokens(handed_over, steps[2:]) == whole[2:]
    assert tokens(torch.Generator(device).manual_seed(11), steps[2:]) != whole[2:]  # without the skip


def test_random_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log().expand(20000, 3).contiguous()
    torch.manual_seed(1)
    tokens = Sampler()(logits, batch(20000, generators=[None] * 20000)).token_ids
    freq = torch.bincount(tokens, minlength=3).float() / 20000
    assert torch.allclose(freq, probs, atol=0.02)


def test_temperature_sharpens() -> None:
    logits = torch.tensor([1.0, 0.0]).expand(5000, 2).contiguous()
    torch.manual_seed(2)
    cold = Sampler()(logits, batch(5000, temperature=0.1)).token_ids.float().mean()
    hot = Sampler()(logits, batch(5000, temperature=1.0)).token_ids.float().mean()
    assert cold < 0.01 and 0.2 < hot < 0.33  # p(token 1) = 1/(1+e) ~ 0.27 at temperature 1


def test_logprobs_of_the_chosen_and_top_tokens() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    b = batch(1, temperature=0.0)
    b.max_num_logprobs = 2
    out = Sampler()(logits, b)
    expected = torch.log_softmax(logits, dim=-1)
    assert torch.allclose(out.logprobs, expected[:, 2])
    assert out.top_token_ids.tolist() == [[2, 1]]
    assert torch.allclose(out.top_logprobs, expected[:, [2, 1]])


def bitmask_of(allowed: list[list[int] | None], vocab: int) -> torch.Tensor:
    """Rows of allowed token ids (None: every token) as a grammar's int32 bitmask."""
    words = torch.full((len(allowed), (vocab + 31) // 32), -1, dtype=torch.int32)
    for row, ids in enumerate(allowed):
        if ids is not None:
            bits = [0] * words.shape[1]
            for token in ids:
                bits[token // 32] |= 1 << (token % 32)
            words[row] = torch.tensor([b - (1 << 32) if b >= 1 << 31 else b for b in bits], dtype=torch.int32)
    return words


def test_a_token_bitmask_constrains_only_its_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 70, generator=generator)
    greedy = batch(3, temperature=0.0)
    greedy.token_bitmask = bitmask_of([[3, 40, 69], None, [64]], 70)
    argmax = RecordingArgmax()
    tokens = Sampler(argmax=argmax)(logits.clone(), greedy).token_ids.tolist()
    assert tokens == [[3, 40, 69][int(logits[0, [3, 40, 69]].argmax())], int(logits[1].argmax()), 64]
    assert argmax.calls == []  # a masked batch leaves the plain-greedy path
    random_rows = batch(3, temperature=1.0, generators=[torch.Generator().manual_seed(i) for i in range(3)])
    random_rows.token_bitmask = greedy.token_bitmask
    for _ in range(20):
        row0, _, row2 = Sampler()(logits.clone(), random_rows).token_ids.tolist()
        assert row0 in (3, 40, 69) and row2 == 64


def test_a_bitmask_allowing_everything_changes_nothing() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 100, generator=generator)
    plain = batch(4, temperature=0.7, generators=[torch.Generator().manual_seed(i) for i in range(4)])
    masked = batch(4, temperature=0.7, generators=[torch.Generator().manual_seed(i) for i in range(4)])
    masked.token_bitmask = bitmask_of([None] * 4, 100)
    masked.max_num_logprobs = plain.max_num_logprobs = 2
    want, got = Sampler()(logits.clone(), plain), Sampler()(logits.clone(), masked)
    assert torch.equal(want.token_ids, got.token_ids) and torch.equal(want.top_logprobs, got.top_logprobs)


def test_the_bitmask_comes_before_penalties_and_filters() -> None:
    """top_k counts only allowed tokens: with k=1 the best allowed token wins, not the best overall."""
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.5]])
    filtered = batch(1, temperature=1.0, top_ks=torch.tensor([1]))
    filtered.token_bitmask = bitmask_of([[2, 3]], 4)
    assert Sampler()(logits, filtered).token_ids.tolist() == [2]


def test_a_masked_token_stays_masked_under_a_penalty_float32_rounds_to_zero() -> None:
    """repetition_penalty 1e-89 is a valid float64 but 0.0 in float32: -inf * 0 must not become NaN."""
    from gpu_backend.layers.sampler import SamplingBatch, apply_penalties

    logits = torch.tensor([[float("-inf"), 1.0, -2.0, float("-inf")]])
    logits[0, 2] = 3.0  # seen in the prompt: 3 / 0 would be +inf
    batch = SamplingBatch(temperatures=None, top_ks=None, top_ps=None, min_ps=None, generators=[None], all_greedy=True,
                          repetition_penalties=torch.tensor([1e-89], dtype=torch.float32),
                          frequency_penalties=torch.zeros(1), presence_penalties=torch.zeros(1),
                          prompt_mask=torch.tensor([[True, False, True, True]]),
                          output_counts=torch.zeros(1, 4, dtype=torch.int32))
    penalized = apply_penalties(logits, batch)
    assert not torch.isnan(penalized).any() and not torch.isposinf(penalized).any()
    assert penalized[0, 0] == float("-inf") and penalized[0, 3] == float("-inf")
    assert not torch.isnan(torch.softmax(penalized, dim=-1)).any()


def test_logit_bias_moves_only_its_rows_before_the_mask() -> None:
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.5], [5.0, 4.0, 1.0, 0.5]])
    biased = batch(2, temperature=0.0)
    biased.logit_bias = torch.tensor([[-100.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    argmax = RecordingArgmax()
    assert Sampler(argmax=argmax)(logits.clone(), biased).token_ids.tolist() == [1, 0]
    assert argmax.calls == []  # a biased batch leaves the plain-greedy path
    biased.logit_bias = torch.tensor([[0.0, 0.0, 0.0, 100.0], [0.0, 0.0, 0.0, 0.0]])
    biased.token_bitmask = bitmask_of([[0, 1], None], 4)  # the grammar wins over a bias
    assert Sampler()(logits.clone(), biased).token_ids.tolist() == [0, 0]
