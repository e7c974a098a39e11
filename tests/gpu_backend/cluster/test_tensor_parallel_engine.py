"""The whole model sharded over a Gloo world: TP=2 generates exactly what one process does.

Every rank runs the same engine and requests on its shard (the scheduler is deterministic and the
LM head gathers the whole logits on each rank), so this checks the sharded layers, the per-rank
KV cache and the two all-reduces per layer end to end, greedy and seeded, for Llama with GQA,
Qwen2 with qkv bias, and a checkpoint with fewer KV heads than ranks.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from checkpoints import build_checkpoint
from gpu_backend import LLM, SamplingParams
from spawned_ranks import run_engine_rank, run_ranks
from tokenizer_fixtures import build_byte_level_tokenizer

VOCAB = 384  # as the session's checkpoints (conftest)
PROMPTS = ["Once upon a time", "The quick brown fox", "A"]
OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 64, "max_model_len": 256}
SAMPLINGS = {"greedy": {"temperature": 0.0, "max_tokens": 16},
             "seeded": {"temperature": 0.8, "top_p": 0.9, "seed": 7, "max_tokens": 16}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_kv_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_checkpoint(tmp_path_factory.mktemp("kv1") / "llama", "llama", num_kv_heads=1, vocab_size=VOCAB)
    build_byte_level_tokenizer(folder, vocab_size=VOCAB)
    return folder


@pytest.mark.parametrize("sampling", list(SAMPLINGS))
@pytest.mark.parametrize("model", ["llama", "qwen2", "one_kv_head"])
def test_tp2_generates_what_one_process_does(model: str, sampling: str, checkpoints: dict[str, Path],
                                             one_kv_head: Path, tmp_path: Path) -> None:
    folder = one_kv_head if model == "one_kv_head" else checkpoints[model]
    expected = [o.token_ids for o in LLM(str(folder), progress=False, **OPTIONS).generate(
        PROMPTS, SamplingParams(**SAMPLINGS[sampling]))]
    run_ranks(run_engine_rank, 2, (2, free_port(), str(folder), PROMPTS, SAMPLINGS[sampling], OPTIONS, str(tmp_path)))
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == expected
