"""Process groups of one cluster: every prefill and decode instance is a TP×PP block of ranks in one world.

An instance owns a contiguous range of ranks, laid out stage-major: ``rank = first_rank + pp_rank *
tp_size + tp_rank``, so the ranks of one pipeline stage (a TP group) are neighbours, which keeps
a stage on one node when a node holds a multiple of ``tp_size`` GPUs. ``build_groups`` creates
every TP and PP group of every instance; ``dist.new_group`` is collective over the whole world,
so each rank calls it with the same instances in the same order and keeps the groups it is in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from .state import TensorParallel


@dataclass(frozen=True)
class InstanceLayout:
    first_rank: int
    tp_size: int = 1
    pp_size: int = 1

    def __post_init__(self) -> None:
        if self.first_rank < 0 or self.tp_size < 1 or self.pp_size < 1:
            raise ValueError(f"an instance needs first_rank >= 0 and tp, pp >= 1, got {self}")

    @property
    def size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def ranks(self) -> range:
        return range(self.first_rank, self.first_rank + self.size)

    def rank_of(self, pp_rank: int, tp_rank: int) -> int:
        return self.first_rank + pp_rank * self.tp_size + tp_rank

    def coords(self, rank: int) -> tuple[int, int]:
        """(pp_rank, tp_rank) of a rank of this instance."""
        return divmod(rank - self.first_rank, self.tp_size)

    def tp_ranks(self, pp_rank: int) -> list[int]:
        return [self.rank_of(pp_rank, tp) for tp in range(self.tp_size)]

    def pp_ranks(self, tp_rank: int) -> list[int]:
        return [self.rank_of(pp, tp_rank) for pp in range(self.pp_size)]


@dataclass(frozen=True)
class RankGroups:
    """This rank's place: its instance, coordinates, groups and pipeline neighbours (global ranks)."""

    instance: InstanceLayout
    rank: int
    pp_rank: int
    tp_rank: int
    tp_group: dist.ProcessGroup | None
    pp_group: dist.ProcessGroup | None

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.instance.pp_size - 1

    @property
    def prev_stage_rank(self) -> int | None:
        return None if self.is_first_stage else self.instance.rank_of(self.pp_rank - 1, self.tp_rank)

    @property
    def next_stage_rank(self) -> int | None:
        return None if self.is_last_stage else self.instance.rank_of(self.pp_rank + 1, self.tp_rank)

    def tensor_parallel(self) -> TensorParallel:
        """What the layers read (``parallel.state.set_tensor_parallel``)."""
        return TensorParallel(self.tp_rank, self.instance.tp_size, self.tp_group)


def check_layout(instances: Sequence[InstanceLayout], world_size: int) -> None:
    """The instances tile ranks 0..world_size-1 exactly, without overlap."""
    taken = sorted(rank for instance in instances for rank in instance.ranks)
    if taken != list(range(world_size)):
        raise ValueError(f"the instances' ranks {taken} must cover 0..{world_size - 1} once each")


def build_groups(instances: Sequence[InstanceLayout], rank: int, timeout: timedelta | None = None) -> RankGroups:
    """Create every instance's TP and PP groups (collective: all ranks, same order); this rank's place.

    ``timeout`` bounds every collective of the groups (a group does not take the world's: left
    out, torch gives it its own default, half an hour)."""
    check_layout(instances, dist.get_world_size())
    mine: dict[str, dist.ProcessGroup | None] = {"tp": None, "pp": None}
    for instance in instances:
        for pp_rank in range(instance.pp_size):
            _keep(mine, "tp", instance.tp_ranks(pp_rank), rank, timeout)
        for tp_rank in range(instance.tp_size):
            _keep(mine, "pp", instance.pp_ranks(tp_rank), rank, timeout)
    instance = next(w for w in instances if rank in w.ranks)
    pp_rank, tp_rank = instance.coords(rank)
    return RankGroups(instance, rank, pp_rank, tp_rank, mine["tp"], mine["pp"])


def _keep(mine: dict[str, dist.ProcessGroup | None], kind: str, ranks: list[int], rank: int,
          timeout: timedelta | None) -> None:
    group = dist.new_group(ranks, timeout=timeout)  # every rank makes every group, in the same order
    if rank in ranks:
        mine[kind] = group
