"""A request's hand-off from a prefill instance to a decode instance, as each rank carries it out.

Every rank of a disaggregated world has a ``HandoffRank`` (made by ``join_handoffs``, the
world's ``cluster.roles.RankRoles``); its driver calls its methods on every rank of the instance
at once. KV moves chunk by chunk while the prompt is computed. After each step, the prefill
instance's driver (``prefill.PrefillRole``) has its ranks ``send`` the blocks of each prompt that
were completed since the last turn (all that is left once the prompt is done). The sends read
copies, and a thread waits for them while the instance computes on. The driver reports each chunk
to the service, which tells the decode instance, whose ranks post the matching receives into
buffers (``receive``). Told the first token, the decode instance's driver (``decode.DecodeRole``)
lands the request once its own share of every chunk has arrived (``land``): every rank waits for
its share (up to the transfer's deadline), the ranks agree that all of it arrived, and only then
is it written into the reserved blocks and the sequence joins the running batch. A request the
client left while its KV was on the way is dropped (``drop``): its receives still complete, into
buffers nobody reads, so the pair's messages stay in step.

ORDER. A pair's messages match in the order they are posted (NCCL has no tags). The prefill
driver reports its chunks in the order it posts them, and the service relays them in that order
(for requests it no longer tracks too, which the decode instance receives into scratch buffers),
so both ends post in the same order. A pair whose transfer failed is never used again (the
service's router avoids it): its order may be lost.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from ..cluster.roles import DriverRole, RankWorld
from ..cluster.stage_runner import DriverRunner, StageRunner
from ..engine.core import EngineCore
from ..parallel.comm import min_over
from ..parallel.groups import InstanceLayout
from .decode import DecodeRole
from .kv_transfer import (KVLayout, KVTransferError, PendingReceive, PendingTransfer, Route, plan_transfer,
                          post_receive_kv, send_kv)
from .prefill import PrefillRole

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cluster:
    """Every instance's KV layout (by instance index), which one this rank belongs to, the transfer bound,
    and the group of each (prefill, decode) pair this rank is in (absent: the world's group)."""

    kv_layouts: list[KVLayout]
    mine: int
    timeout: timedelta
    pair_groups: Mapping[tuple[int, int], dist.ProcessGroup] = field(default_factory=dict)

    def post_send(self, kv_cache: torch.Tensor, rank: int, dst_instance: int, block_ids: Sequence[int]) -> PendingTransfer:
        """This rank's share of a request's KV to instance ``dst_instance``, on its way."""
        layout = self.kv_layouts[self.mine]
        routes = _routes(layout, self.kv_layouts[dst_instance])
        return send_kv(kv_cache, layout, routes, rank, list(block_ids), timeout=self.timeout,
                       group=self.pair_groups.get((self.mine, dst_instance))).start()

    def post_receive(self, kv_cache: torch.Tensor, rank: int, src_instance: int,
                     block_ids: Sequence[int]) -> PendingReceive:
        """This rank's share of a request's KV from instance ``src_instance``, posted (``land`` writes it)."""
        layout = self.kv_layouts[self.mine]
        routes = _routes(self.kv_layouts[src_instance], layout)
        pending = post_receive_kv(kv_cache, layout, routes, rank, list(block_ids), timeout=self.timeout,
                                  group=self.pair_groups.get((src_instance, self.mine)))
        return pending.start()


class RankTransfers:
    """One rank's KV transfers in flight: sends whose buffers must outlive them, and the chunks
    of each request received so far, waiting to land (by request id)."""

    def __init__(self, cluster: Cluster, rank: int, control_group: dist.ProcessGroup | None) -> None:
        self.cluster, self.rank, self.control_group = cluster, rank, control_group
        self.sending: list[tuple[str, PendingTransfer]] = []
        self.receiving: dict[str, list[PendingReceive]] = {}
        self.dropped: list[PendingReceive] = []

    def send(self, kv_cache: torch.Tensor, request_id: str, dst_instance: int, block_ids: Sequence[int]) -> None:
        self.sending.append((request_id, self.cluster.post_send(kv_cache, self.rank, dst_instance, block_ids)))

    def receive(self, kv_cache: torch.Tensor, request_id: str, src_instance: int, block_ids: Sequence[int]) -> None:
        """Post the receives of one chunk of a request's KV, into ``block_ids`` once it lands."""
        chunk = self.cluster.post_receive(kv_cache, self.rank, src_instance, block_ids)
        self.receiving.setdefault(request_id, []).append(chunk)

    def arrived(self, request_id: str) -> tuple[bool, str | None] | None:
        """This rank's share of a request: (True, None) arrived, (False, why) failed, None on its way."""
        try:
            return (True, None) if all(chunk.done() for chunk in self.receiving.get(request_id, [])) else None
        except KVTransferError as error:
            return False, str(error)

    def land(self, request_id: str, arrived_here: bool) -> bool:
        """Collective over the instance's ranks: write the request's KV into its blocks on every rank
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


class HandoffRank:
    """A rank's part in its instance's hand-offs (``cluster.roles.RankPart``): the driver calls its
    ``remote_methods`` on every rank of the instance at once; its roles read the rest."""

    name = "kv"
    remote_methods = frozenset({"send", "receive", "land", "drop"})

    def __init__(self, transfers: RankTransfers, runner: StageRunner, role: str) -> None:
        self.transfers, self.runner, self.role = transfers, runner, role
        self.instance = transfers.cluster.mine  # this rank's instance

    def send(self, request_id: str, dst_instance: int, block_ids: list[int]) -> None:
        """Post this rank's share of the blocks to the decode instance; they may be freed now."""
        self.transfers.send(self.runner.kv_cache, request_id, dst_instance, block_ids)

    def receive(self, request_id: str, src_instance: int, block_ids: list[int]) -> None:
        """Post this rank's receives of a chunk from the prefill instance (``land`` writes it)."""
        self.transfers.receive(self.runner.kv_cache, request_id, src_instance, block_ids)

    def land(self, request_id: str) -> bool:
        """Collective: write the request's KV into its blocks on every rank if it all arrived (each
        rank waits for its share, up to the deadline); whether it did."""
        return self.transfers.land(request_id, arrived_here=True)

    def drop(self, request_id: str) -> None:
        self.transfers.drop(request_id)

    def arrived(self, request_id: str) -> tuple[bool, str | None] | None:
        return self.transfers.arrived(request_id)

    def is_receiving(self, request_id: str) -> bool:
        return request_id in self.transfers.receiving

    def after_message(self) -> None:
        self.reap()

    def reap(self) -> None:
        for request_id, why in self.transfers.reap():
            log.warning("rank %d: the KV of %s did not reach its decode instance: %s", self.transfers.rank,
                        request_id, why)

    def driver_roles(self, engine: EngineCore, send: Callable[[object], None]) -> list[DriverRole]:
        assert isinstance(self.runner, DriverRunner)
        if self.role == "prefill":
            return [PrefillRole(engine, self.runner, self, send)]
        if self.role == "decode":
            return [DecodeRole(engine, self.runner, self, send)]
        return []


def join_handoffs(world: RankWorld, runner: StageRunner) -> HandoffRank:
    """Every rank's part in a disaggregated world (``cluster.roles.RankRoles``); collective: every
    rank makes every (prefill, decode) pair's group."""
    config = world.model_config
    layouts = [KVLayout(layout, config.num_hidden_layers, config.num_key_value_heads, spec.pp_layers)
               for layout, spec in zip(world.instances, world.specs)]
    cluster = Cluster(layouts, world.mine, world.timeout, _pair_groups(world.instances, world.specs, world.rank,
                                                                      world.timeout))
    transfers = RankTransfers(cluster, world.rank, world.control_group)
    return HandoffRank(transfers, runner, world.specs[world.mine].role)


def _pair_groups(instances: list[InstanceLayout], specs: Sequence, rank: int,
                 timeout: timedelta) -> dict[tuple[int, int], dist.ProcessGroup]:
    """A group for each (prefill instance, decode instance) pair this rank is in, over which their KV
    moves: a transfer that fails or times out can then break only that pair's links (with NCCL,
    the watchdog aborts the communicators of the group that timed out), never the others'."""
    groups = {}
    for src, src_spec in enumerate(specs):
        for dst, dst_spec in enumerate(specs):
            if (src_spec.role, dst_spec.role) != ("prefill", "decode"):
                continue
            ranks = [*instances[src].ranks, *instances[dst].ranks]
            group = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                groups[(src, dst)] = group
    return groups


def _finished(pending: PendingTransfer) -> bool:
    try:
        return pending.done()
    except KVTransferError:
        return True


@functools.lru_cache(maxsize=64)
def _routes(src: KVLayout, dst: KVLayout) -> list[Route]:
    return plan_transfer(src, dst)
