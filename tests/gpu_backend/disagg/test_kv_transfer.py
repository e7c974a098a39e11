"""KV transfer between a prefill and a decode instance: the plan (pure) and the transfer over Gloo (spawned worlds)."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable

import pytest

import torch

from gpu_backend.disagg.kv_transfer import KVLayout, Route, plan_transfer, receive_kv, send_kv
from gpu_backend.parallel.groups import InstanceLayout
from kv_transfer_ranks import (NUM_BLOCKS, SCENARIOS, Scenario, kv_values, run_landing_rank, run_timeout_rank,
                               run_transfer_rank)
from spawned_ranks import run_ranks

EXPECTED_ROUTES = {
    "tp2 -> tp1": [Route(0, 2, range(0, 3), range(0, 2)), Route(1, 2, range(0, 3), range(2, 4))],
    "pp2 (3+1 layers) -> tp2": [Route(0, 2, range(0, 3), range(0, 1)), Route(1, 2, range(3, 4), range(0, 1)),
                                Route(0, 3, range(0, 3), range(1, 2)), Route(1, 3, range(3, 4), range(1, 2))],
    "tp1 -> pp2": [Route(0, 1, range(0, 2), range(0, 2)), Route(0, 2, range(2, 3), range(0, 2))],
    "tp2×pp2 -> tp1": [Route(0, 4, range(0, 2), range(0, 2)), Route(1, 4, range(0, 2), range(2, 4)),
                       Route(2, 4, range(2, 4), range(0, 2)), Route(3, 4, range(2, 4), range(2, 4))],
    "1 kv head, tp2 -> tp2": [Route(0, 2, range(0, 2), range(0, 1)), Route(1, 3, range(0, 2), range(0, 1))],
}
EXTRA_LAYOUTS = [  # (num_layers, num_kv_heads, prefill, decode): uneven and replicated re-shards
    (5, 8, InstanceLayout(0, tp_size=4, pp_size=2), InstanceLayout(8, tp_size=2, pp_size=3)),
    (6, 2, InstanceLayout(0, tp_size=8), InstanceLayout(8, tp_size=4, pp_size=2)),
    (4, 2, InstanceLayout(6, tp_size=1, pp_size=4), InstanceLayout(0, tp_size=2, pp_size=3)),
    (3, 4, InstanceLayout(0, tp_size=2), InstanceLayout(2, tp_size=4)),
]
LAYOUT_PAIRS = [s.layouts() for s in SCENARIOS] + [
    (KVLayout(p, layers, heads), KVLayout(d, layers, heads)) for layers, heads, p, d in EXTRA_LAYOUTS]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_each_rank_holds_its_stage_layers_and_its_heads() -> None:
    layout = KVLayout(InstanceLayout(4, tp_size=2, pp_size=2), num_layers=5, num_kv_heads=4)
    assert [(layout.layers_of(r), layout.heads_of(r)) for r in layout.instance.ranks] == [
        (range(0, 3), range(0, 2)), (range(0, 3), range(2, 4)), (range(3, 5), range(0, 2)), (range(3, 5), range(2, 4))]
    replicated = KVLayout(InstanceLayout(0, tp_size=4), num_layers=2, num_kv_heads=2, pp_layers=None)
    assert [replicated.heads_of(r) for r in range(4)] == [range(0, 1), range(0, 1), range(1, 2), range(1, 2)]
    assert KVLayout(InstanceLayout(0, pp_size=2), 4, 1, pp_layers=(3, 1)).layers_of(1) == range(3, 4)


@pytest.mark.parametrize("make, match", [
    (lambda: KVLayout(InstanceLayout(0, tp_size=2), 2, 3), "3 KV heads cannot be split over 2"),
    (lambda: KVLayout(InstanceLayout(0, tp_size=4), 2, 3), "3 KV heads cannot be split over 4"),
    (lambda: KVLayout(InstanceLayout(0, pp_size=2), 4, 2, pp_layers=(2, 1)), "sum to 3"),
    (lambda: KVLayout(InstanceLayout(0, tp_size=2), 2, 2).heads_of(2), "rank 2 is not in instance"),
    (lambda: plan_transfer(KVLayout(InstanceLayout(0), 2, 2), KVLayout(InstanceLayout(1), 3, 2)), "same model"),
    (lambda: plan_transfer(KVLayout(InstanceLayout(0, tp_size=2), 2, 2), KVLayout(InstanceLayout(1), 2, 2)), "share ranks"),
])
def test_bad_layouts_are_refused(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_plans_written_out_by_hand(scenario: Scenario) -> None:
    assert plan_transfer(*scenario.layouts()) == EXPECTED_ROUTES[scenario.name]


@pytest.mark.parametrize("src, dst", LAYOUT_PAIRS)
def test_every_destination_layer_and_head_comes_from_exactly_one_source_that_holds_it(src: KVLayout,
                                                                                      dst: KVLayout) -> None:
    routes = plan_transfer(src, dst)
    assert routes == plan_transfer(src, dst), "deterministic"
    got = Counter((r.dst_rank, layer, head) for r in routes for layer in r.layers for head in r.heads)
    needed = {(rank, layer, head) for rank in dst.instance.ranks
              for layer in dst.layers_of(rank) for head in dst.heads_of(rank)}
    assert set(got) == needed and set(got.values()) == {1}
    for r in routes:
        assert set(r.layers) <= set(src.layers_of(r.src_rank)) and set(r.heads) <= set(src.heads_of(r.src_rank))
    assert len({(r.src_rank, r.dst_rank) for r in routes}) == len(routes), "one route per pair"


def test_replicated_heads_are_spread_over_their_replicas() -> None:
    """8 prefill ranks hold 2 heads (4 replicas each); 4 decode ranks hold them twice over."""
    src, dst = KVLayout(InstanceLayout(0, tp_size=8), 2, 2), KVLayout(InstanceLayout(8, tp_size=4), 2, 2)
    # decode tp index t reads head t // 2 from prefill tp index 4 * (t // 2) + t % 4
    assert [(r.src_rank, r.dst_rank) for r in plan_transfer(src, dst)] == [(0, 8), (1, 9), (6, 10), (7, 11)]
    same = KVLayout(InstanceLayout(2, tp_size=2), 2, 1)
    assert [(r.src_rank, r.dst_rank) for r in plan_transfer(KVLayout(InstanceLayout(0, tp_size=2), 2, 1), same)] == [
        (0, 2), (1, 3)], "equal TP: each decode rank reads from its counterpart"


def test_a_cache_that_does_not_match_its_layout_is_refused_and_an_empty_request_sends_nothing() -> None:
    src, dst = KVLayout(InstanceLayout(0, tp_size=2), 2, 4), KVLayout(InstanceLayout(2), 2, 4)
    routes = plan_transfer(src, dst)
    with pytest.raises(ValueError, match=r"want \(2, 2, blocks, block_size, 4, head_dim\)"):
        receive_kv(torch.zeros(2, 2, 4, 3, 2, 8), dst, routes, 2, [0])  # holds 2 heads, not 4
    assert send_kv(torch.zeros(2, 2, 4, 3, 2, 8), src, routes, 0, []).works == []  # no process group needed


def test_test_values_tell_every_coordinate_apart() -> None:
    """Every cache value differs, so a swapped head, layer, block or slot fails the spawned checks."""
    values = kv_values(range(4), range(4), range(NUM_BLOCKS)).flatten()
    assert values.unique().numel() == values.numel() and values.min() >= 1


def test_kv_moves_and_reshards_between_instances() -> None:
    """Every scenario in one 5-rank world: all layers at once, layer by layer, two layers at a time."""
    run_ranks(run_transfer_rank, 5, (free_port(),))


def test_receive_without_sender_times_out() -> None:
    started = time.monotonic()
    run_ranks(run_timeout_rank, 2, (free_port(), 2.0))
    assert time.monotonic() - started < 30


def test_a_decode_instance_lands_kv_only_when_every_rank_has_its_share() -> None:
    run_ranks(run_landing_rank, 3, (free_port(), 2.0))
