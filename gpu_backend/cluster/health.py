"""Which instances of a running world are lost, and why: the service's view of its ranks' health.

An instance is lost when one of its ranks exits, when its driver reports an error or its pipe
closes, when one of its ranks stops beating (``heartbeat``: a frozen process, found within
``heartbeat_timeout_s``), or when its driver says nothing for longer than a collective may take
(``timeout_s``) plus the heartbeat's bound (a rank alive but stuck). Only that instance is lost:
the others share no group with it but the transfer groups of its pairs.

One death brings down the instance's other ranks within milliseconds (their collectives fail), so
a report names the rank that died first: the monitor wakes on each rank's exit (its sentinel) and
notes when it saw it; ranks first seen dead together are told apart by how they ended (a signal,
as from ``kill -9`` or the OOM killer, before an exit of the rank's own) and then the driver last
(it fails on its peers' errors).
"""

from __future__ import annotations

import signal
import time

from .config import ClusterConfig
from .launch import RankProcesses

ROOT_CAUSE_WAIT_S = 0.5  # for a dead rank's exit to show once its peers have noticed it
POLL_S = 0.1
DEATH_POLL_S = 0.005  # while waiting for that exit: fine enough to see which rank went first


class InstanceHealth:
    def __init__(self, ranks: RankProcesses, cluster: ClusterConfig) -> None:
        self.ranks, self.cluster = ranks, cluster
        self.last_heard = [time.monotonic()] * len(ranks.instance_ranks)
        self.lost: dict[int, str] = {}  # instance -> why
        self.died_at: dict[int, float] = {}  # rank -> when it was first seen dead

    @property
    def live_instances(self) -> list[int]:
        return [instance for instance in range(len(self.ranks.instance_ranks)) if instance not in self.lost]

    def heard(self, instance: int) -> None:
        self.last_heard[instance] = time.monotonic()

    def sentinels(self) -> list[int]:
        """What to wait on to wake when a rank of a live instance exits (none for torchrun's ranks)."""
        processes = self.ranks.processes
        return [processes[rank].sentinel for instance in self.live_instances for rank in self.ranks.instance_ranks[instance]
                if rank < len(processes) and rank not in self.died_at]

    def note_deaths(self) -> None:
        """Note when each rank is first seen dead: the order tells the first death from its knock-ons."""
        now = time.monotonic()
        for rank, process in enumerate(self.ranks.processes):
            if rank not in self.died_at and not process.is_alive():
                self.died_at[rank] = now

    def check(self) -> list[tuple[int, str]]:
        """(instance, why) for each live instance found lost now (not yet in ``lost``)."""
        found = {}
        for instance in self.live_instances:
            why = self._exited(instance) or self._frozen(instance) or self._silent(instance)
            if why is not None:
                found[instance] = why
        return list(found.items())

    def root_cause(self, instance: int, symptom: str) -> str:
        """A rank that died makes its driver fail (or exit) too: name the first to die when one did."""
        deadline = time.monotonic() + ROOT_CAUSE_WAIT_S
        while True:
            self.note_deaths()
            first = self._first_death(instance)
            if first is not None:
                return first
            if time.monotonic() > deadline:
                return symptom
            time.sleep(DEATH_POLL_S)

    def _first_death(self, instance: int) -> str | None:
        """How the instance's rank that died first ended (of those noted dead), or None."""
        driver = self.ranks.driver_ranks[instance]
        dead = [rank for rank in self.ranks.instance_ranks[instance] if rank in self.died_at]
        if not dead:
            return None

        def order(rank: int) -> tuple[float, bool, bool, int]:
            code = self.ranks.processes[rank].exitcode
            return self.died_at[rank], not (code is not None and code < 0), rank == driver, rank

        first = min(dead, key=order)
        return describe_exit(first, self.ranks.processes[first].exitcode)

    def _exited(self, instance: int) -> str | None:
        self.note_deaths()
        return self._first_death(instance)

    def _frozen(self, instance: int) -> str | None:
        heartbeats = self.ranks.heartbeats
        if heartbeats is None:
            return None
        silent = heartbeats.silent_ranks(self.ranks.instance_ranks[instance], self.cluster.heartbeat_timeout_s)
        if not silent:
            return None
        rank, seconds = silent[0]
        return (f"rank {rank} gave no sign of life in {seconds:.1f} s (heartbeat timeout "
                f"{self.cluster.heartbeat_timeout_s:g} s): it hung")

    def _silent(self, instance: int) -> str | None:
        bound = self.cluster.instance_timeout_s + self.cluster.heartbeat_timeout_s
        quiet = time.monotonic() - self.last_heard[instance]
        if quiet <= bound:
            return None
        return f"no word from instance {instance}'s driver in {quiet:.1f} s (bound {bound:g} s): a rank hung"


def describe_exit(rank: int, exitcode: int | None) -> str:
    """``rank 0 exited with code -9 (killed by SIGKILL)``."""
    if exitcode is None or exitcode >= 0:
        return f"rank {rank} exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f"rank {rank} exited with code {exitcode} (killed by {name})"
