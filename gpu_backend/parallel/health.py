"""Which workers of a running world are lost, and why: the service's view of its ranks' health.

A worker is lost when one of its ranks exits, when its driver reports an error or its pipe
closes, when one of its ranks stops beating (``heartbeat``: a frozen process, found within
``heartbeat_timeout_s``), or when its driver says nothing for longer than a collective may take
(``timeout_s``) plus the heartbeat's bound (a rank alive but stuck). Only that worker is lost:
the others share no group with it but the transfer groups of its pairs.
"""

from __future__ import annotations

import time

from ..config import ParallelConfig
from .launch import RankProcesses

ROOT_CAUSE_WAIT_S = 0.5  # for a dead rank's exit to show once its peers have noticed it
POLL_S = 0.1


class WorkerHealth:
    def __init__(self, ranks: RankProcesses, parallel: ParallelConfig) -> None:
        self.ranks, self.parallel = ranks, parallel
        self.last_heard = [time.monotonic()] * len(ranks.worker_ranks)
        self.lost: dict[int, str] = {}  # worker -> why

    @property
    def live_workers(self) -> list[int]:
        return [worker for worker in range(len(self.ranks.worker_ranks)) if worker not in self.lost]

    def heard(self, worker: int) -> None:
        self.last_heard[worker] = time.monotonic()

    def check(self) -> list[tuple[int, str]]:
        """(worker, why) for each live worker found lost now (not yet in ``lost``)."""
        found = {}
        for worker in self.live_workers:
            why = self._exited(worker) or self._frozen(worker) or self._silent(worker)
            if why is not None:
                found[worker] = why
        return list(found.items())

    def root_cause(self, worker: int, symptom: str) -> str:
        """A rank that died makes its driver fail (or exit) too: name the dead one when there is one."""
        ranks, driver = self.ranks.worker_ranks[worker], self.ranks.driver_ranks[worker]
        deadline = time.monotonic() + ROOT_CAUSE_WAIT_S
        while True:
            exited = self.ranks.exited_rank(ranks, skip=driver)
            if exited is None and time.monotonic() > deadline:  # none of the others: the driver itself?
                exited = self.ranks.exited_rank(range(driver, driver + 1))
                if exited is None:
                    return symptom
            if exited is not None:
                return f"rank {exited[0]} exited with code {exited[1]}"
            time.sleep(POLL_S / 2)

    def _exited(self, worker: int) -> str | None:
        exited = self.ranks.exited_rank(self.ranks.worker_ranks[worker])
        return None if exited is None else f"rank {exited[0]} exited with code {exited[1]}"

    def _frozen(self, worker: int) -> str | None:
        heartbeats = self.ranks.heartbeats
        if heartbeats is None:
            return None
        silent = heartbeats.silent_ranks(self.ranks.worker_ranks[worker], self.parallel.heartbeat_timeout_s)
        if not silent:
            return None
        rank, seconds = silent[0]
        return (f"rank {rank} gave no sign of life in {seconds:.1f} s (heartbeat timeout "
                f"{self.parallel.heartbeat_timeout_s:g} s): it hung")

    def _silent(self, worker: int) -> str | None:
        bound = self.parallel.timeout_s + self.parallel.heartbeat_timeout_s
        quiet = time.monotonic() - self.last_heard[worker]
        if quiet <= bound:
            return None
        return f"no word from worker {worker}'s driver in {quiet:.1f} s (bound {bound:g} s): a rank hung"
