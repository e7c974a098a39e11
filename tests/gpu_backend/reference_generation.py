"""transformers' greedy decoding as the reference the engine's output is compared with (tests only)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from conftest import VOCAB
from gpu_backend import SamplingParams

NEW_TOKENS = 32
PROMPT_LENGTHS = (3, 17, 33, 50)


def make_prompts(seed: int, lengths: tuple[int, ...] = PROMPT_LENGTHS) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, VOCAB, (n,), generator=generator).tolist() for n in lengths]


_reference_cache: dict[tuple[str, tuple[int, ...]], tuple[list[int], list[torch.Tensor]]] = {}


def hf_greedy(folder: Path, prompt: list[int], new_tokens: int = NEW_TOKENS) -> tuple[list[int], list[torch.Tensor]]:
    """transformers' greedy decoding with its KV cache: token ids and each step's log-softmax."""
    key = (str(folder), tuple(prompt))
    if key not in _reference_cache:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        tokens, logprobs = [], []
        with torch.no_grad():
            out = model(torch.tensor([prompt]), use_cache=True)
            for _ in range(new_tokens):
                step = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                token = int(step.argmax())
                tokens.append(token)
                logprobs.append(step)
                out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
        _reference_cache[key] = (tokens, logprobs)
    return _reference_cache[key]


GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=3)


def assert_matches_transformers(folder: Path, prompts: list[list[int]], outputs: list) -> None:
    for prompt, output in zip(prompts, outputs):
        expected, steps = hf_greedy(folder, prompt)
        assert output.prompt_token_ids == prompt
        assert output.token_ids == expected
        for logprob, reference in zip(output.outputs[0].logprobs, steps):
            assert math.isclose(logprob.logprob, float(reference[logprob.token_id]), abs_tol=1e-4)
            top_ids = reference.topk(3).indices.tolist()
            assert list(logprob.top) == top_ids
            for token_id, value in logprob.top.items():
                assert math.isclose(value, float(reference[token_id]), abs_tol=1e-4)
