"""Move one request's KV cache from a prefill instance to a decode instance, re-sharding it on the way.

Both instances are TP×PP blocks of ranks in one ``torch.distributed`` world (``InstanceLayout``), and
may differ in TP, in PP and in how the layers are split. ``KVLayout`` says which global layers and
KV heads each rank of an instance holds; ``plan_transfer`` turns two layouts into ``Route``s (which
source rank sends which layers and heads to which destination rank), the same on every rank
without talking to anyone; ``send_kv`` (prefill side) and ``post_receive_kv`` (decode side) post
a rank's share of the routes as point-to-point ops on the world's backend (NCCL on GPUs, Gloo on
CPU), over the pair's own group, and return a ``PendingTransfer`` its loop polls while it goes
on computing. Buffers live on the cache's device.

WIRE LAYOUT. One message per route and call: one contiguous tensor in the cache's dtype,

    [2 (0 = keys, 1 = values), num_layers, num_blocks, block_size, num_heads, head_dim]

the route's layers (ascending global layers, cut to the call's ``layers``) and heads (ascending
global KV heads), and the request's blocks in sequence order, whatever their physical ids on
either side. One block of one layer and one head is ``block_size × head_dim`` values for keys
and as many for values. Messages carry no tag (NCCL has none): a pair's messages match in the
order they are posted, so both sides must call with the same ``layers`` chunks in the same
order (all at once, or layer by layer as prefill computes them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Self

import torch
import torch.distributed as dist

from ..errors import EngineError
from ..parallel.groups import InstanceLayout
from ..parallel.pipeline import split_layers, stage_of

DEFAULT_TIMEOUT = timedelta(seconds=30)  # the instance's default --instance-timeout
MIN_WAIT_S = 0.001  # a zero timeout means "the group's default" to torch.distributed
_WAITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="edgewise-kv-wait")


class KVTransferError(EngineError):
    """A KV transfer to or from a peer rank failed or timed out; with Gloo the pair's link is closed after."""


@dataclass(frozen=True)
class KVLayout:
    """Where an instance's KV cache lives: each rank's stage layers and its share of the KV heads."""

    instance: InstanceLayout
    num_layers: int
    num_kv_heads: int
    pp_layers: tuple[int, ...] | None = None  # layers per stage (--pp-layers); None: even split

    def __post_init__(self) -> None:
        split_layers(self.num_layers, self.instance.pp_size, self.pp_layers)  # raises on a bad split
        tp, heads = self.instance.tp_size, self.num_kv_heads
        if heads < 1 or (heads % tp if heads >= tp else tp % heads):
            raise ValueError(f"{heads} KV heads cannot be split over {tp} tensor-parallel ranks: "
                             f"one must be a multiple of the other")

    @property
    def kv_replicas(self) -> int:
        """Ranks of a stage that hold the same KV heads (more than one with fewer heads than ranks)."""
        return max(1, self.instance.tp_size // self.num_kv_heads)

    @property
    def heads_per_rank(self) -> int:
        return max(1, self.num_kv_heads // self.instance.tp_size)

    @property
    def num_head_shards(self) -> int:
        """Distinct head ranges over a stage's ranks."""
        return self.num_kv_heads // self.heads_per_rank

    def shard_heads(self, shard: int) -> range:
        return range(shard * self.heads_per_rank, (shard + 1) * self.heads_per_rank)

    def stage_layers(self) -> list[range]:
        return split_layers(self.num_layers, self.instance.pp_size, self.pp_layers)

    def layers_of(self, rank: int) -> range:
        """Global layers held by global ``rank`` (its pipeline stage's)."""
        pp_rank, _ = self._coords(rank)
        return stage_of(pp_rank, self.instance.pp_size, self.num_layers, self.pp_layers).layers

    def heads_of(self, rank: int) -> range:
        """Global KV heads held by global ``rank`` (as ``QKVParallelLinear`` loads them)."""
        _, tp_rank = self._coords(rank)
        return self.shard_heads(tp_rank // self.kv_replicas)

    def _coords(self, rank: int) -> tuple[int, int]:
        if rank not in self.instance.ranks:
            raise ValueError(f"rank {rank} is not in instance {self.instance}")
        return self.instance.coords(rank)


@dataclass(frozen=True)
class Route:
    """``src_rank`` sends global ``layers`` × ``heads`` of the request's blocks to ``dst_rank``."""

    src_rank: int
    dst_rank: int
    layers: range
    heads: range


def plan_transfer(src: KVLayout, dst: KVLayout) -> list[Route]:
    """Routes covering every (layer, head) of every destination rank once, ordered by destination.

    A source rank holds one layer range and one head range, as does a destination rank, so their
    overlap is one contiguous block: there is at most one route per (source, destination) pair."""
    _check_compatible(src, dst)
    return [route for dst_rank in dst.instance.ranks for route in _routes_to(src, dst, dst_rank)]


def _routes_to(src: KVLayout, dst: KVLayout, dst_rank: int) -> Iterator[Route]:
    layers, heads = dst.layers_of(dst_rank), dst.heads_of(dst_rank)
    _, dst_tp = dst.instance.coords(dst_rank)
    for pp_rank, stage_layers in enumerate(src.stage_layers()):
        shared_layers = _overlap(layers, stage_layers)
        for shard in range(src.num_head_shards):
            shared_heads = _overlap(heads, src.shard_heads(shard))
            if not shared_layers or not shared_heads:
                continue
            # Replicas of a shard hold the same values, so any one will do. Taking the one at the
            # destination's tp index modulo the replica count spreads destinations over replicas
            # (equal TP on both sides: each decode rank reads from its counterpart) instead of
            # piling every read on the first replica's link.
            tp_rank = shard * src.kv_replicas + dst_tp % src.kv_replicas
            yield Route(src.instance.rank_of(pp_rank, tp_rank), dst_rank, shared_layers, shared_heads)


def _check_compatible(src: KVLayout, dst: KVLayout) -> None:
    if (src.num_layers, src.num_kv_heads) != (dst.num_layers, dst.num_kv_heads):
        raise ValueError(f"prefill and decode must serve the same model: {src.num_layers} layers × "
                         f"{src.num_kv_heads} KV heads vs {dst.num_layers} × {dst.num_kv_heads}")
    if set(src.instance.ranks) & set(dst.instance.ranks):
        raise ValueError(f"prefill instance {src.instance} and decode instance {dst.instance} share ranks")


def _overlap(a: range, b: range) -> range:
    return range(max(a.start, b.start), min(a.stop, b.stop))


class PendingTransfer:
    """One rank's point-to-point ops of one request's transfer, the buffers they use, and the
    deadline they must meet. ``start`` hands the waiting to a thread (Gloo's handles cannot be
    polled), so a rank's loop checks ``done`` between steps and the transfer overlaps its compute."""

    def __init__(self, num_blocks: int, timeout: timedelta) -> None:
        self.num_blocks, self.timeout = num_blocks, timeout
        self.deadline = time.monotonic() + timeout.total_seconds()
        self.works: list[tuple[str, dist.Work]] = []  # (what it is, handle)
        self._buffers: list[torch.Tensor] = []
        self._waiter: Future | None = None

    def add(self, what: str, work: dist.Work, buffer: torch.Tensor) -> None:
        self.works.append((what, work))
        self._buffers.append(buffer)

    def start(self) -> Self:
        if self.works:
            self._waiter = _WAITERS.submit(self._wait_all)
        return self

    def done(self) -> bool:
        """Whether every op has finished; raises ``KVTransferError`` if one failed or ran past the deadline."""
        if self._waiter is None:
            return not self.works
        if not self._waiter.done():
            return False
        self._waiter.result()
        return True

    def wait(self) -> None:
        """Block until every op is done; raise ``KVTransferError`` past the deadline."""
        if self._waiter is not None:
            self._waiter.result()
        else:
            self._wait_all()
        self.works.clear()

    def _wait_all(self) -> None:
        for what, work in self.works:
            remaining = timedelta(seconds=max(MIN_WAIT_S, self.deadline - time.monotonic()))
            _wait(work, what, self.num_blocks, remaining, self.timeout)


class PendingReceive(PendingTransfer):
    """A decode rank's receives: the buffers land in its cache only once every one has arrived, so
    a failed or dropped transfer leaves the cache as it was."""

    def __init__(self, num_blocks: int, timeout: timedelta, block_ids: torch.Tensor) -> None:
        super().__init__(num_blocks, timeout)
        self.block_ids = block_ids
        self._targets: list[torch.Tensor] = []

    def add_target(self, what: str, work: dist.Work, buffer: torch.Tensor, target: torch.Tensor) -> None:
        self.add(what, work, buffer)
        self._targets.append(target)

    def land(self) -> None:
        """Write what arrived into the request's blocks (after ``wait``, or once ``done``)."""
        for target, buffer in zip(self._targets, self._buffers):
            target.index_copy_(2, self.block_ids, buffer)  # target is a view: this writes the cache's blocks


def send_kv(kv_cache: torch.Tensor, layout_src: KVLayout, routes: Sequence[Route], my_rank: int,
            block_ids: Sequence[int] | torch.Tensor, layers: range | None = None, *,
            timeout: timedelta = DEFAULT_TIMEOUT, group: dist.ProcessGroup | None = None) -> PendingTransfer:
    """Post this prefill rank's sends of the request's blocks (``layers``: only these global layers).

    The sends read copies of the blocks, so the blocks may be freed as soon as this returns."""
    ids = _request_blocks(block_ids, kv_cache, layout_src, my_rank)
    pending = PendingTransfer(len(ids), timeout)
    for route, part in _my_parts(routes, my_rank, layers, len(ids), receiving=False):
        buffer = _local(kv_cache, layout_src, my_rank, part, route.heads).index_select(2, ids)
        pending.add(f"send to rank {route.dst_rank}", dist.isend(buffer, dst=route.dst_rank, group=group), buffer)
    return pending


def post_receive_kv(kv_cache: torch.Tensor, layout_dst: KVLayout, routes: Sequence[Route], my_rank: int,
                    block_ids: Sequence[int] | torch.Tensor, layers: range | None = None, *,
                    timeout: timedelta = DEFAULT_TIMEOUT, group: dist.ProcessGroup | None = None) -> PendingReceive:
    """Post this decode rank's receives of its share of the request, into buffers; ``land`` writes them."""
    ids = _request_blocks(block_ids, kv_cache, layout_dst, my_rank)
    pending = PendingReceive(len(ids), timeout, ids)
    for route, part in _my_parts(routes, my_rank, layers, len(ids), receiving=True):
        target = _local(kv_cache, layout_dst, my_rank, part, route.heads)
        buffer = torch.empty((*target.shape[:2], len(ids), *target.shape[3:]), dtype=kv_cache.dtype,
                             device=kv_cache.device)
        pending.add_target(f"receive from rank {route.src_rank}", dist.irecv(buffer, src=route.src_rank, group=group),
                           buffer, target)
    return pending


def receive_kv(kv_cache: torch.Tensor, layout_dst: KVLayout, routes: Sequence[Route], my_rank: int,
               block_ids: Sequence[int] | torch.Tensor, layers: range | None = None, *,
               timeout: timedelta = DEFAULT_TIMEOUT, group: dist.ProcessGroup | None = None) -> None:
    """Receive this decode rank's share of the request into its blocks ``block_ids``, blocking."""
    pending = post_receive_kv(kv_cache, layout_dst, routes, my_rank, block_ids, layers, timeout=timeout, group=group)
    pending.wait()
    pending.land()


def _my_parts(routes: Sequence[Route], my_rank: int, layers: range | None, num_blocks: int,
              receiving: bool) -> Iterator[tuple[Route, range]]:
    """This rank's routes, in plan order (so both ends of a pair post in the same order), and their layers."""
    if num_blocks == 0:  # both sides hold the same count, so neither posts anything
        return
    for route in routes:
        if (route.dst_rank if receiving else route.src_rank) != my_rank:
            continue
        part = route.layers if layers is None else _overlap(route.layers, layers)
        if part:
            yield route, part


def _local(kv_cache: torch.Tensor, layout: KVLayout, rank: int, layers: range, heads: range) -> torch.Tensor:
    """The cache's view of global ``layers`` × ``heads`` (all blocks)."""
    first_layer, first_head = layout.layers_of(rank).start, layout.heads_of(rank).start
    return kv_cache[:, layers.start - first_layer:layers.stop - first_layer, :, :,
                    heads.start - first_head:heads.stop - first_head]


def _request_blocks(block_ids: Sequence[int] | torch.Tensor, kv_cache: torch.Tensor, layout: KVLayout,
                    rank: int) -> torch.Tensor:
    """The request's block ids as an index on the cache's device, once the cache is checked against the layout."""
    expected = (2, len(layout.layers_of(rank)), len(layout.heads_of(rank)))
    if kv_cache.dim() != 6 or (kv_cache.shape[0], kv_cache.shape[1], kv_cache.shape[4]) != expected:
        raise ValueError(f"rank {rank}'s KV cache {tuple(kv_cache.shape)} does not match its layout: want "
                         f"(2, {expected[1]}, blocks, block_size, {expected[2]}, head_dim)")
    return torch.as_tensor(block_ids, dtype=torch.long, device=kv_cache.device)


def _wait(work: dist.Work, what: str, num_blocks: int, remaining: timedelta, bound: timedelta) -> None:
    try:
        done = work.wait(timeout=remaining)
    except RuntimeError as exc:  # Gloo and NCCL raise on a timeout or a closed link
        raise KVTransferError(f"KV transfer of a request of {num_blocks} blocks: {what} failed or timed out "
                              f"(bound {bound.total_seconds():g} s): {exc}") from exc
    if done is False:
        raise KVTransferError(f"KV transfer of a request of {num_blocks} blocks: {what} did not finish within "
                              f"{bound.total_seconds():g} s")
