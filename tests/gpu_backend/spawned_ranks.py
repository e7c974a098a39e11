"""What each rank of a spawned Gloo world runs in the parallel tests (here so ``spawn`` can import it).

``run_rank``: a rank builds the layers at the world's TP size, loads full checkpoint tensors
through their ``weight_loader`` (each keeps only its slice), runs them, and checks the results
against the same tensors computed whole in plain torch. ``run_groups_rank``: a rank of a world
holding several TP×PP instances checks its place and talks over its TP and PP groups.
``run_engine_rank``: every rank runs the same engine on its shard of a checkpoint and the same
requests (the scheduler is deterministic, the logits are gathered whole on each rank) and writes
what it generated.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from gpu_backend.cluster.launch import rank_context
from gpu_backend.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from gpu_backend.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from gpu_backend.parallel.groups import InstanceLayout, build_groups
from gpu_backend.parallel.state import TensorParallel, set_tensor_parallel

def run_ranks(target: Callable[..., None], nprocs: int, args: tuple[Any, ...]) -> None:
    """``target(rank, *args)`` in ``nprocs`` processes started the way the service starts its ranks
    (``launch.rank_context``: forked from a server that imported torch once); waits for all of them."""
    rank_context()  # before the fork server starts, so that it preloads torch
    mp.start_processes(target, args=args, nprocs=nprocs, join=True, start_method="forkserver")


HIDDEN, HEAD_DIM, NUM_HEADS, INTERMEDIATE, VOCAB = 16, 4, 4, 24, 37  # vocab not divisible by 2 or 4
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def init(rank: int, world_size: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))


def run_groups_rank(rank: int, instances: list[InstanceLayout], port: int) -> None:
    init(rank, sum(instance.size for instance in instances), port)
    try:
        place = build_groups(instances, rank)
        assert place.instance.rank_of(place.pp_rank, place.tp_rank) == rank
        # TP: a sum over this stage's ranks only
        value = torch.tensor([float(rank)])
        dist.all_reduce(value, group=place.tp_group)
        assert value.item() == sum(place.instance.tp_ranks(place.pp_rank)), (rank, value)
        # PP: each stage hands its rank to the next one, point to point
        if place.next_stage_rank is not None:
            dist.send(torch.tensor([rank]), dst=place.next_stage_rank)
        if place.prev_stage_rank is not None:
            got = torch.tensor([-1])
            dist.recv(got, src=place.prev_stage_rank)
            assert got.item() == place.prev_stage_rank, (rank, got)
        everyone = torch.tensor([1.0])
        dist.all_reduce(everyone, group=place.pp_group)
        assert everyone.item() == place.instance.pp_size
    finally:
        dist.destroy_process_group()


def run_engine_rank(rank: int, world_size: int, port: int, folder: str, prompts: list[str],
                    sampling: dict, options: dict, out: str) -> None:
    from gpu_backend import LLM, SamplingParams

    init(rank, world_size, port)
    try:
        set_tensor_parallel(TensorParallel(rank, world_size, dist.group.WORLD))
        llm = LLM(folder, progress=False, **options)
        outputs = llm.generate(prompts, SamplingParams(**sampling))
        torch.save([output.token_ids for output in outputs], f"{out}/rank{rank}.pt")
    finally:
        set_tensor_parallel(TensorParallel())
        dist.destroy_process_group()


def run_rank(rank: int, world_size: int, port: int, num_kv_heads: int) -> None:
    init(rank, world_size, port)
    try:
        set_tensor_parallel(TensorParallel(rank, world_size, dist.group.WORLD))
        check_layers(rank, world_size, num_kv_heads)
    finally:
        set_tensor_parallel(TensorParallel())
        dist.destroy_process_group()


def check_layers(rank: int, world_size: int, num_kv_heads: int) -> None:
    full = _checkpoint(num_kv_heads)  # the same tensors on every rank: one seed
    ids = torch.tensor([[0, 5, 18, 19, 36, 7]])
    x = torch.randn(1, 6, HIDDEN, generator=torch.Generator().manual_seed(1))

    embedding = VocabParallelEmbedding(VOCAB, HIDDEN)
    embedding.weight.weight_loader(embedding.weight, full["embed"])
    torch.testing.assert_close(embedding(ids), F.embedding(ids, full["embed"]), **TOLERANCE)

    qkv = QKVParallelLinear(HIDDEN, HEAD_DIM, NUM_HEADS, num_kv_heads, bias=True)
    for part in ("q", "k", "v"):
        qkv.weight.weight_loader(qkv.weight, full[f"{part}_w"], part)
        qkv.bias.weight_loader(qkv.bias, full[f"{part}_b"], part)
    q, k, v = qkv(x).split([qkv.q_size, qkv.kv_size, qkv.kv_size], dim=-1)
    kv_head = rank // qkv.kv_replicas  # fewer KV heads than ranks: neighbours hold the same one
    for got, part, index, size in ((q, "q", rank, qkv.q_size), (k, "k", kv_head, qkv.kv_size),
                                   (v, "v", kv_head, qkv.kv_size)):
        whole = F.linear(x, full[f"{part}_w"], full[f"{part}_b"])
        torch.testing.assert_close(got, whole[..., index * size:(index + 1) * size], **TOLERANCE)

    o_proj = RowParallelLinear(NUM_HEADS * HEAD_DIM, HIDDEN, bias=True)
    o_proj.weight.weight_loader(o_proj.weight, full["o_w"])
    o_proj.bias.weight_loader(o_proj.bias, full["o_b"])
    whole_q = F.linear(x, full["q_w"], full["q_b"])
    torch.testing.assert_close(o_proj(q), F.linear(whole_q, full["o_w"], full["o_b"]), **TOLERANCE)

    gate_up = MergedColumnParallelLinear(HIDDEN, [INTERMEDIATE, INTERMEDIATE])
    gate_up.weight.weight_loader(gate_up.weight, full["gate"], 0)
    gate_up.weight.weight_loader(gate_up.weight, full["up"], 1)
    down = RowParallelLinear(INTERMEDIATE, HIDDEN)
    down.weight.weight_loader(down.weight, full["down"])
    whole_mlp = F.linear(F.silu(F.linear(x, full["gate"])) * F.linear(x, full["up"]), full["down"])
    torch.testing.assert_close(down.forward_gated(gate_up(x)), whole_mlp, **TOLERANCE)

    lm_head = ParallelLMHead(VOCAB, HIDDEN)
    lm_head.weight.weight_loader(lm_head.weight, full["embed"])
    torch.testing.assert_close(lm_head(x), F.linear(x, full["embed"]), **TOLERANCE)
    assert world_size == 1 or embedding.weight.shape[0] < VOCAB, "each rank holds only its slice of the vocab"


def _checkpoint(num_kv_heads: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shapes = {"embed": (VOCAB, HIDDEN), "q_w": (NUM_HEADS * HEAD_DIM, HIDDEN), "q_b": (NUM_HEADS * HEAD_DIM,),
              "k_w": (num_kv_heads * HEAD_DIM, HIDDEN), "k_b": (num_kv_heads * HEAD_DIM,),
              "v_w": (num_kv_heads * HEAD_DIM, HIDDEN), "v_b": (num_kv_heads * HEAD_DIM,),
              "o_w": (HIDDEN, NUM_HEADS * HEAD_DIM), "o_b": (HIDDEN,), "gate": (INTERMEDIATE, HIDDEN),
              "up": (INTERMEDIATE, HIDDEN), "down": (HIDDEN, INTERMEDIATE)}
    return {name: torch.randn(*shape, generator=generator) for name, shape in shapes.items()}
