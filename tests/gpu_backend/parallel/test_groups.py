"""Process groups of a cluster: instances as TP×PP blocks of one world, their groups and pipeline neighbours."""

from __future__ import annotations

import socket

import pytest

from gpu_backend.parallel.groups import InstanceLayout, check_layout
from spawned_ranks import run_groups_rank, run_ranks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ranks_are_laid_out_stage_major() -> None:
    instance = InstanceLayout(first_rank=4, tp_size=2, pp_size=3)
    assert list(instance.ranks) == [4, 5, 6, 7, 8, 9]
    assert instance.tp_ranks(1) == [6, 7] and instance.pp_ranks(1) == [5, 7, 9]
    assert instance.coords(7) == (1, 1) and instance.rank_of(2, 0) == 8


def test_layouts_must_tile_the_world() -> None:
    check_layout([InstanceLayout(0, 2, 2), InstanceLayout(4, 2)], world_size=6)
    with pytest.raises(ValueError, match="cover 0..5 once each"):
        check_layout([InstanceLayout(0, 2, 2), InstanceLayout(3, 2)], world_size=6)  # rank 3 twice, 5 never
    with pytest.raises(ValueError, match="tp, pp >= 1"):
        InstanceLayout(0, tp_size=0)


def test_two_instances_in_one_world_talk_over_their_own_groups() -> None:
    """A TP=2×PP=2 instance on ranks 0-3 beside a TP=2 instance on ranks 4-5, as prefill and decode will sit."""
    instances = [InstanceLayout(0, tp_size=2, pp_size=2), InstanceLayout(4, tp_size=2)]
    run_ranks(run_groups_rank, 6, (instances, free_port()))
