"""A request's hand-off from a prefill worker to a decode worker, as each rank carries it out.

KV moves chunk by chunk while the prompt is computed. After each step, the prefill worker's
driver tells its ranks to send the blocks of each prompt that were completed since the last
turn ("kv_send"; all that is left once the prompt is done). The sends read copies, and a thread
waits for them while the worker computes on. The driver reports each chunk to the service, which
tells the decode worker, whose ranks post the matching receives into buffers ("kv_recv").
Told the first token, the decode worker's driver lands the request once its own share of
every chunk has arrived ("kv_land"): every rank waits for its share (up to the transfer's
deadline), the ranks agree that all of it arrived, and only then is it written into the
reserved blocks and the sequence joins the running batch. A request the client left while its
KV was on the way is dropped ("kv_drop"): its receives still complete, into buffers nobody
reads, so the pair's messages stay in step.

ORDER. A pair's messages match in the order they are posted (NCCL has no tags). The prefill
driver reports its chunks in the order it posts them, and the service relays them in that order
(for requests it no longer tracks too, which the decode worker receives into scratch buffers),
so both ends post in the same order. A pair whose transfer failed is never used again (the
service's router avoids it): its order may be lost.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from ..parallel.comm import min_over
from .kv_transfer import (KVLayout, KVTransferError, PendingReceive, PendingTransfer, Route, plan_transfer,
                          post_receive_kv, send_kv)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cluster:
    """Every worker's KV layout (by worker index), which one this rank belongs to, the transfer bound,
    and the group of each (prefill, decode) pair this rank is in (absent: the world's group)."""

    kv_layouts: list[KVLayout]
    mine: int
    timeout: timedelta
    pair_groups: Mapping[tuple[int, int], dist.ProcessGroup] = field(default_factory=dict)

    def post_send(self, kv_cache: torch.Tensor, rank: int, dst_worker: int, block_ids: Sequence[int]) -> PendingTransfer:
        """This rank's share of a request's KV to worker ``dst_worker``, on its way."""
        layout = self.kv_layouts[self.mine]
        routes = _routes(layout, self.kv_layouts[dst_worker])
        return send_kv(kv_cache, layout, routes, rank, list(block_ids), timeout=self.timeout,
                       group=self.pair_groups.get((self.mine, dst_worker))).start()

    def post_receive(self, kv_cache: torch.Tensor, rank: int, src_worker: int,
                     block_ids: Sequence[int]) -> PendingReceive:
        """This rank's share of a request's KV from worker ``src_worker``, posted (``land`` writes it)."""
        layout = self.kv_layouts[self.mine]
        routes = _routes(self.kv_layouts[src_worker], layout)
        pending = post_receive_kv(kv_cache, layout, routes, rank, list(block_ids), timeout=self.timeout,
                                  group=self.pair_groups.get((src_worker, self.mine)))
        return pending.start()


class RankTransfers:
    """One rank's KV transfers in flight: sends whose buffers must outlive them, and the chunks
    of each request received so far, waiting to land (by request id)."""

    def __init__(self, cluster: Cluster, rank: int, control_group: dist.ProcessGroup | None) -> None:
        self.cluster, self.rank, self.control_group = cluster, rank, control_group
        self.sending: list[tuple[str, PendingTransfer]] = []
        self.receiving: dict[str, list[PendingReceive]] = {}
        self.dropped: list[PendingReceive] = []

    def send(self, kv_cache: torch.Tensor, request_id: str, dst_worker: int, block_ids: Sequence[int]) -> None:
        self.sending.append((request_id, self.cluster.post_send(kv_cache, self.rank, dst_worker, block_ids)))

    def receive(self, kv_cache: torch.Tensor, request_id: str, src_worker: int, block_ids: Sequence[int]) -> None:
        """Post the receives of one chunk of a request's KV, into ``block_ids`` once it lands."""
        chunk = self.cluster.post_receive(kv_cache, self.rank, src_worker, block_ids)
        self.receiving.setdefault(request_id, []).append(chunk)

    def arrived(self, request_id: str) -> tuple[bool, str | None] | None:
        """This rank's share of a request: (True, None) arrived, (False, why) failed, None on its way."""
        try:
            return (True, None) if all(chunk.done() for chunk in self.receiving.get(request_id, [])) else None
        except KVTransferError as error:
            return False, str(error)

    def land(self, request_id: str, arrived_here: bool) -> bool:
        """Collective over the worker's ranks: write the request's KV into its blocks on every rank
        if every rank's share arrived; whether it did. Each rank waits for its share up to the deadline."""
        chunks = self.receiving.pop(request_id, [])
        if arrived_here:
            try:
                for chunk in chunks:
                    chunk.wait()
            except KVTransferError as error:
                log.warning("rank %d: %s", self.rank, error)
                arrived_here = False
        everywhere = arrived_here if self.control_group is None else bool(min_over(self.control_group,
                                                                                   int(arrived_here)))
        if everywhere:
            for chunk in chunks:
                chunk.land()
        return everywhere

    def drop(self, request_id: str) -> None:
        """Nobody wants this request's KV any more; its receives run out into their buffers."""
        self.dropped += self.receiving.pop(request_id, [])

    def reap(self) -> list[tuple[str, str]]:
        """Forget the finished sends and dropped receives; (request id, why) of the sends that failed."""
        failed, still = [], []
        for request_id, pending in self.sending:
            try:
                if not pending.done():
                    still.append((request_id, pending))
            except KVTransferError as error:
                failed.append((request_id, str(error)))
        self.sending = still
        self.dropped = [pending for pending in self.dropped if not _finished(pending)]
        return failed


def _finished(pending: PendingTransfer) -> bool:
    try:
        return pending.done()
    except KVTransferError:
        return True


@functools.lru_cache(maxsize=64)
def _routes(src: KVLayout, dst: KVLayout) -> list[Route]:
    return plan_transfer(src, dst)
