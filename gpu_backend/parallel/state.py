"""The tensor-parallel layout of this process; a single process is rank 0 of 1.

Layers read ``tp_rank()`` and ``tp_size()`` when they are built, so the shapes of their
parameters are this rank's shard. Every collective goes through ``all_reduce`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1
    group: dist.ProcessGroup | None = None


_tp = TensorParallel()


def set_tensor_parallel(layout: TensorParallel) -> None:
    global _tp
    _tp = layout


def tp_rank() -> int:
    return _tp.rank


def tp_size() -> int:
    return _tp.size


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the tensor-parallel group (in place); a no-op on one rank."""
    if _tp.size > 1:
        dist.all_reduce(tensor, group=_tp.group)
    return tensor


def all_gather_last_dim(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's slice along the last dimension (the vocab-parallel logits)."""
    if _tp.size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(_tp.size)]
    dist.all_gather(parts, tensor.contiguous(), group=_tp.group)
    return torch.cat(parts, dim=-1)
