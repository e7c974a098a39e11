"""A request's hand-off from a prefill worker to a decode worker, as each rank carries it out.

Once a prompt is computed and its first token sampled, the prefill worker's driver tells its
ranks to send the request's blocks ("kv_send"); once told that first token, the decode worker's
driver tells its ranks to receive them into the blocks it reserved ("kv_recv"). Every rank then
moves its own share (``kv_transfer``): the routes follow from the two workers' layouts alone.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch

from .kv_transfer import KVLayout, Route, plan_transfer, receive_kv, send_kv


@dataclass(frozen=True)
class Cluster:
    """Every worker's KV layout (by worker index), which one this rank belongs to, the transfer bound."""

    kv_layouts: list[KVLayout]
    mine: int
    timeout: timedelta

    def send(self, kv_cache: torch.Tensor, rank: int, dst_worker: int, block_ids: Sequence[int]) -> None:
        """This rank's share of a request's KV to worker ``dst_worker``; returns once it is sent."""
        layout = self.kv_layouts[self.mine]
        routes = _routes(layout, self.kv_layouts[dst_worker])
        send_kv(kv_cache, layout, routes, rank, list(block_ids), timeout=self.timeout).wait()

    def receive(self, kv_cache: torch.Tensor, rank: int, src_worker: int, block_ids: Sequence[int]) -> None:
        """This rank's share of a request's KV from worker ``src_worker``, into ``block_ids``."""
        layout = self.kv_layouts[self.mine]
        routes = _routes(self.kv_layouts[src_worker], layout)
        receive_kv(kv_cache, layout, routes, rank, list(block_ids), timeout=self.timeout)


@functools.lru_cache(maxsize=64)
def _routes(src: KVLayout, dst: KVLayout) -> list[Route]:
    return plan_transfer(src, dst)
