"""The tensor-parallel layout of this process; a single process is rank 0 of 1.

Layers read ``tp_rank()`` and ``tp_size()`` when they are built, so the shapes of their
parameters are this rank's shard; their collectives (``comm.py``) run over this layout's group.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def tensor_parallel() -> TensorParallel:
    return _tp


def tp_rank() -> int:
    return _tp.rank


def tp_size() -> int:
    return _tp.size
