"""Shared fixtures: tiny random-weight checkpoints of every architecture, with a tokenizer, per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints import ARCHS, build_checkpoint
from tokenizer_fixtures import build_byte_level_tokenizer

VOCAB = 384


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch -> folder; also "llama_v4_sharded": 3 layers, transformers 4 config layout, sharded weights."""
    root = tmp_path_factory.mktemp("ckpt")
    folders = {}
    for arch in ARCHS:
        folders[arch] = build_checkpoint(root / arch, arch, vocab_size=VOCAB, num_layers=2)
    folders["llama_v4_sharded"] = build_checkpoint(root / "llama_v4_sharded", "llama", vocab_size=VOCAB,
                                                   transformers_layout="v4", shard_bytes=64 * 1024, num_layers=3)
    for folder in folders.values():
        build_byte_level_tokenizer(folder, vocab_size=VOCAB)
    return folders
