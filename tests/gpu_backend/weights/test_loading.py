"""A compressed folder loads wherever a checkpoint does, and generates exactly what the original does:
LLM on CPU (greedy and seeded, tied heads, sharded files, TP=2), the embedder, and the served backend."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import torch
from backend_fixtures import OPTIONS, TOKEN, serving
from compressed_checkpoints import as_version_1, compress
from spawned_ranks import run_engine_rank, run_ranks

from gpu_backend import LLM, SamplingParams
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.engine.embedder import Embedder
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines
from gpu_backend.weights import compress as compress_module

PROMPTS = ["Once upon a time", "The quick brown fox", "A"]
SAMPLINGS = {"greedy": SamplingParams(temperature=0.0, max_tokens=16),
             "seeded": SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=16)}
SHAKESPEARE = "@cf/edgewise/tiny-shakespeare"
MINILM = "@cf/sentence-transformers/all-minilm-l6-v2"


@pytest.fixture(scope="module")
def compressed(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's test checkpoints (float32, compressed as they are) and tiny-shakespeare (bfloat16)."""
    root = tmp_path_factory.mktemp("compressed")
    folders = {arch: root / arch for arch in ("llama", "llama32_tied", "qwen2", "llama_v4_sharded")}
    for arch, dst in folders.items():
        compress(checkpoints[arch], dst)
    folders[SHAKESPEARE] = root / "shakespeare"
    compress(builtin_model_path(SHAKESPEARE), folders[SHAKESPEARE])
    with pytest.MonkeyPatch.context() as patch:  # tiles of 512 weights: several per matrix, as real ones have
        patch.setattr(compress_module, "MIN_TILE_WEIGHTS", 512)
        compress(checkpoints["qwen2"], root / "qwen2_small_tiles")
    folders["qwen2_small_tiles"] = root / "qwen2_small_tiles"
    compress(checkpoints["qwen2"], root / "qwen2_v1")
    as_version_1(root / "qwen2_v1")
    folders["qwen2_v1"] = root / "qwen2_v1"
    return folders


def token_ids(folder: Path, sampling: SamplingParams, prompts: list[str] = PROMPTS) -> list[list[int]]:
    llm = LLM(str(folder), progress=False, **OPTIONS)
    return [output.outputs[0].token_ids for output in llm.generate(prompts, sampling)]


@pytest.mark.parametrize("sampling", list(SAMPLINGS))
@pytest.mark.parametrize("arch", ["llama", "llama32_tied", "qwen2", "llama_v4_sharded"])
def test_compressed_test_checkpoint_generates_what_the_original_does(arch: str, sampling: str,
                                                                     checkpoints: dict[str, Path],
                                                                     compressed: dict[str, Path]) -> None:
    assert token_ids(compressed[arch], SAMPLINGS[sampling]) == token_ids(checkpoints[arch], SAMPLINGS[sampling])


def test_compressed_tiny_shakespeare_writes_the_same_play(compressed: dict[str, Path]) -> None:
    sampling = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    expected = token_ids(builtin_model_path(SHAKESPEARE), sampling, ["ROMEO:", "KING HENRY:"])
    assert token_ids(compressed[SHAKESPEARE], sampling, ["ROMEO:", "KING HENRY:"]) == expected
    assert len(expected[0]) == 48


def test_compressed_minilm_embeds_exactly_as_the_original(tmp_path: Path) -> None:
    compress(builtin_model_path(MINILM), tmp_path / "minilm", torch.bfloat16)
    texts = ["lossless weights", "a second, longer sentence to embed"]
    original = Embedder(builtin_model_path(MINILM), dtype="bfloat16").embed(texts)
    assert Embedder(tmp_path / "minilm", dtype="bfloat16").embed(texts) == original


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("folder", ["qwen2", "qwen2_small_tiles", "qwen2_v1"])
def test_tp2_ranks_load_their_slices_of_a_compressed_checkpoint(checkpoints: dict[str, Path], folder: str,
                                                                 compressed: dict[str, Path], tmp_path: Path) -> None:
    """Version 2 (each rank reads the tiles of its slices: with small tiles, about half of each matrix) and
    version 1 (each rank reads every part whole, then cuts it)."""
    sampling = {"temperature": 0.0, "max_tokens": 16}
    expected = token_ids(checkpoints["qwen2"], SamplingParams(**sampling))
    options = {**OPTIONS, "num_kv_blocks": 64}
    run_ranks(run_engine_rank, 2, (2, free_port(), str(compressed[folder]), PROMPTS, sampling, options, str(tmp_path)))
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == expected


def test_the_backend_serves_a_compressed_folder_as_it_serves_the_original(checkpoints: dict[str, Path],
                                                                          compressed: dict[str, Path]) -> None:
    models = {"@cf/test/original": checkpoints["llama"], "@cf/test/compressed": compressed["llama"]}
    engines = LocalEngines(models, **OPTIONS)
    try:
        with serving(create_app(engines, TOKEN, max_queue=8)) as url:
            answers = [httpx.post(f"{url}/client/v4/accounts/a/ai/run/{name}", timeout=60,
                                  headers={"authorization": f"Bearer {TOKEN}"},
                                  json={"prompt": "Once upon", "max_tokens": 12, "temperature": 0}).json()
                       for name in models]
    finally:
        engines.shutdown()
    assert answers[0]["success"] and answers[0]["result"]["response"]
    assert answers[1]["result"]["response"] == answers[0]["result"]["response"]


@pytest.mark.parametrize(("tp", "pp"), [(1, 2), (2, 2)], ids=["pp2", "tp2-pp2"])
def test_a_sharded_instance_over_a_compressed_folder_generates_what_one_process_does(
        checkpoints: dict[str, Path], compressed: dict[str, Path], tp: int, pp: int) -> None:
    """Pipeline stages load only their layers' tensors, and each TP rank of a stage its slices, from the
    compressed folder (Gloo on CPU)."""
    import asyncio

    from gpu_backend.cluster.config import ClusterConfig
    from gpu_backend.cluster.sharded_engine import ShardedEngine
    from gpu_backend.config import EngineConfig

    sampling = SamplingParams(temperature=0.0, max_tokens=12)
    expected = token_ids(checkpoints["qwen2"], sampling, PROMPTS[:2])
    engine = ShardedEngine(EngineConfig(model=str(compressed["qwen2_small_tiles"]), **OPTIONS),
                           ClusterConfig.colocated(tp, pp, instance_timeout_s=20.0))

    async def generate(prompt: str, request_id: str) -> list[int]:
        tokens: list[int] = []
        async for output in engine.generate(prompt, sampling, request_id):
            tokens += output.new_token_ids
        return tokens

    try:
        got = [asyncio.run(generate(prompt, f"p{index}")) for index, prompt in enumerate(PROMPTS[:2])]
        assert engine.error is None
    finally:
        engine.shutdown()
    assert got == expected
