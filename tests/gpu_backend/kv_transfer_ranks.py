"""What each rank of a spawned Gloo world runs in the KV transfer tests (here so ``spawn`` can import it).

Each scenario puts a prefill instance and a decode instance in one world. A prefill rank fills its
cache with values that encode every coordinate (k/v, global layer, global head, block, slot,
dim), so a value that lands on the wrong layer, head, block or slot is caught, and sends the
request's blocks; a decode rank receives them into other block ids and checks every value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from gpu_backend.disagg.handoff import Cluster, RankTransfers
from gpu_backend.disagg.kv_transfer import KVLayout, KVTransferError, plan_transfer, receive_kv, send_kv
from gpu_backend.parallel.groups import InstanceLayout

NUM_BLOCKS, BLOCK_SIZE, HEAD_DIM, MAX_LAYERS, MAX_HEADS = 8, 3, 2, 8, 8
SRC_BLOCKS, DST_BLOCKS = [5, 1, 6], [2, 7, 0]  # the request's blocks in sequence order, on each side
TIMEOUT = timedelta(seconds=30)


@dataclass(frozen=True)
class Scenario:
    name: str
    num_layers: int
    num_kv_heads: int
    prefill: InstanceLayout
    decode: InstanceLayout
    prefill_pp_layers: tuple[int, ...] | None = None
    decode_pp_layers: tuple[int, ...] | None = None

    def layouts(self) -> tuple[KVLayout, KVLayout]:
        return (KVLayout(self.prefill, self.num_layers, self.num_kv_heads, self.prefill_pp_layers),
                KVLayout(self.decode, self.num_layers, self.num_kv_heads, self.decode_pp_layers))


SCENARIOS = [
    Scenario("tp2 -> tp1", 3, 4, InstanceLayout(0, tp_size=2), InstanceLayout(2)),
    Scenario("pp2 (3+1 layers) -> tp2", 4, 2, InstanceLayout(0, pp_size=2), InstanceLayout(2, tp_size=2),
             prefill_pp_layers=(3, 1)),
    Scenario("tp1 -> pp2", 3, 2, InstanceLayout(0), InstanceLayout(1, pp_size=2)),
    Scenario("tp2×pp2 -> tp1", 4, 4, InstanceLayout(0, tp_size=2, pp_size=2), InstanceLayout(4)),
    Scenario("1 kv head, tp2 -> tp2", 2, 1, InstanceLayout(0, tp_size=2), InstanceLayout(2, tp_size=2)),
]
WORLD_SIZE = max(s.decode.ranks.stop for s in SCENARIOS)


def kv_values(layers: range, heads: range, block_ids: list[int] | range) -> torch.Tensor:
    """Cache-shaped values (2, layers, blocks, BLOCK_SIZE, heads, HEAD_DIM), each its coordinates' code (>= 1)."""
    def axis(values: list[int] | range, dim: int) -> torch.Tensor:
        shape = [1] * 6
        shape[dim] = len(values)
        return torch.tensor(list(values), dtype=torch.long).view(shape)

    kv, layer, block = axis(range(2), 0), axis(layers, 1), axis(block_ids, 2)
    slot, head, dim = axis(range(BLOCK_SIZE), 3), axis(heads, 4), axis(range(HEAD_DIM), 5)
    code = ((((kv * MAX_LAYERS + layer) * MAX_HEADS + head) * NUM_BLOCKS + block) * BLOCK_SIZE + slot) * HEAD_DIM + dim
    return (code + 1).float()  # below 2**24: exact in float32; 0 stays "never written"


def layer_chunks(num_layers: int, mode: str) -> list[range | None]:
    size = {"whole": None, "by layer": 1, "by two layers": 2}[mode]
    return [None] if size is None else [range(start, start + size) for start in range(0, num_layers, size)]


def init(rank: int, world_size: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))


def run_transfer_rank(rank: int, port: int) -> None:
    init(rank, WORLD_SIZE, port)
    try:
        # A wrong value is noted, not raised at once, so every rank gets through every scenario and
        # spawn reports this rank's mismatches rather than a peer's closed connection.
        mismatches = []
        for scenario in SCENARIOS:
            for mode in ("whole", "by layer", "by two layers"):
                mismatches.append(transfer(rank, scenario, mode))
                dist.barrier()
        assert not any(mismatches), "\n".join(filter(None, mismatches))
    finally:
        dist.destroy_process_group()


def transfer(rank: int, scenario: Scenario, mode: str) -> str | None:
    """Run one scenario's transfer; on a decode rank, what it got wrong (None: all right)."""
    src, dst = scenario.layouts()
    routes = plan_transfer(src, dst)
    chunks = layer_chunks(scenario.num_layers, mode)
    if rank in src.instance.ranks:
        cache = kv_values(src.layers_of(rank), src.heads_of(rank), range(NUM_BLOCKS))
        pending = [send_kv(cache, src, routes, rank, SRC_BLOCKS, chunk, timeout=TIMEOUT) for chunk in chunks]
        for sends in pending:
            sends.wait()
    elif rank in dst.instance.ranks:
        layers, heads = dst.layers_of(rank), dst.heads_of(rank)
        cache = torch.zeros(2, len(layers), NUM_BLOCKS, BLOCK_SIZE, len(heads), HEAD_DIM)
        for chunk in chunks:
            receive_kv(cache, dst, routes, rank, DST_BLOCKS, chunk, timeout=TIMEOUT)
        expected = torch.zeros_like(cache)  # blocks outside the request stay untouched
        expected[:, :, DST_BLOCKS] = kv_values(layers, heads, SRC_BLOCKS)
        wrong = (cache != expected).nonzero().tolist()
        if wrong:
            return f"{scenario.name} ({mode}): rank {rank} has wrong values at {wrong[:5]} (local indices)"
    return None


def run_timeout_rank(rank: int, port: int, timeout_s: float) -> None:
    """Rank 1 waits for KV that rank 0 never sends; rank 0 stays up until rank 1 has seen the error."""
    init(rank, 2, port)
    try:
        side = dist.new_group([0, 1])  # its own link: the data link closes after a Gloo timeout
        if rank == 1:
            expect_timeout(timeout_s)
            dist.send(torch.ones(1), dst=0, group=side)
        else:
            dist.recv(torch.empty(1), src=1, group=side)
    finally:
        dist.destroy_process_group()


def expect_timeout(timeout_s: float) -> None:
    src, dst = KVLayout(InstanceLayout(0), 1, 1), KVLayout(InstanceLayout(1), 1, 1)
    cache = torch.zeros(2, 1, NUM_BLOCKS, BLOCK_SIZE, 1, HEAD_DIM)
    started = time.monotonic()
    with pytest.raises(KVTransferError, match=r"3 blocks: receive from rank 0"):
        receive_kv(cache, dst, plan_transfer(src, dst), 1, DST_BLOCKS, timeout=timedelta(seconds=timeout_s))
    elapsed = time.monotonic() - started
    assert timeout_s * 0.9 <= elapsed <= timeout_s + 2, f"gave up after {elapsed:.1f} s, timeout {timeout_s} s"
    assert not cache.any(), "a failed receive must leave the cache alone"


def run_landing_rank(rank: int, port: int, timeout_s: float) -> None:
    """A prefill rank (0) and a decode instance of two TP ranks (1, 2), each with ``RankTransfers``.

    First a whole transfer: both decode ranks land it. Then rank 0 sends only rank 1's share: rank 1
    has its share, rank 2 times out, and both agree the KV did not arrive: neither cache changes."""
    init(rank, 3, port)
    try:
        src, dst = KVLayout(InstanceLayout(0), 2, 2), KVLayout(InstanceLayout(1, tp_size=2), 2, 2)
        control = dist.new_group([1, 2])
        pair = dist.new_group([0, 1, 2])
        cluster = Cluster([src, dst], 0 if rank == 0 else 1, timedelta(seconds=timeout_s), {(0, 1): pair})
        transfers = RankTransfers(cluster, rank, control if rank else None)
        if rank == 0:
            cache = kv_values(range(2), range(2), range(NUM_BLOCKS))
            transfers.send(cache, "whole", 1, SRC_BLOCKS)
            routes = plan_transfer(src, dst)
            send_kv(cache, src, [r for r in routes if r.dst_rank == 1], 0, SRC_BLOCKS, group=pair).wait()
            while transfers.sending:
                assert transfers.reap() == []
                time.sleep(0.01)
        else:
            heads = dst.heads_of(rank)
            cache = torch.zeros(2, 2, NUM_BLOCKS, BLOCK_SIZE, len(heads), HEAD_DIM)
            transfers.receive(cache, "whole", 0, DST_BLOCKS)
            assert transfers.land("whole", arrived_here=True)
            expected = torch.zeros_like(cache)
            expected[:, :, DST_BLOCKS] = kv_values(range(2), heads, SRC_BLOCKS)
            assert torch.equal(cache, expected)
            transfers.receive(cache, "partial", 0, [4, 5, 6])
            assert not transfers.land("partial", arrived_here=True), f"rank {rank} landed a partial transfer"
            assert torch.equal(cache, expected), "blocks 4-6 must stay as they were on both ranks"
        dist.barrier(group=dist.new_group([0, 1, 2], backend="gloo"))
    finally:
        dist.destroy_process_group()
