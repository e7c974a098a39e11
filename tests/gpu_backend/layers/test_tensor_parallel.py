"""Tensor-parallel layers over a real Gloo world of spawned processes equal the whole computation.

Each rank loads full tensors through the layers' own weight loaders, keeps its slice, and checks
its outputs (after the layers' all-reduce / all-gather) against plain torch on the whole weights:
column-parallel QKV with KV heads split and replicated, merged gate/up, row-parallel with bias,
vocab-parallel embedding and LM head with a vocabulary that does not divide evenly.
"""

from __future__ import annotations

import socket

import pytest

from spawned_ranks import check_layers, run_rank, run_ranks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_one_rank_is_the_plain_computation() -> None:
    check_layers(rank=0, world_size=1, num_kv_heads=2)


@pytest.mark.parametrize(("world_size", "num_kv_heads"), [(2, 2), (2, 1), (4, 2)],
                         ids=["kv-heads-split", "kv-head-replicated", "tp4-kv-replicated-pairs"])
def test_ranks_together_equal_the_whole(world_size: int, num_kv_heads: int) -> None:
    run_ranks(run_rank, world_size, (world_size, free_port(), num_kv_heads))
