"""Each rank's sign of life, in shared memory the service reads: a frozen rank shows within seconds.

A rank's thread writes the monotonic clock (system-wide on Linux, so comparable between
processes) into the rank's slot every ``interval_s``. A rank that is stopped, or stuck in code
that never lets a thread run, stops beating; the service counts it lost once its last beat is
older than ``ClusterConfig.heartbeat_timeout_s``, without waiting for the longer bound of a
collective. Ranks started by torchrun on other machines have no slot here: only their driver's
pipe tells.
"""

from __future__ import annotations

import multiprocessing.sharedctypes
import threading
import time
from multiprocessing.context import BaseContext


class Heartbeats:
    """One slot per rank of a world (0.0 until the rank's first beat)."""

    def __init__(self, context: BaseContext, world_size: int) -> None:
        self.slots: multiprocessing.sharedctypes.SynchronizedArray = context.Array("d", world_size, lock=False)

    def start_beating(self, rank: int, interval_s: float) -> None:
        """From this rank's process: beat until it exits (a daemon thread)."""
        def beat() -> None:
            while True:
                self.slots[rank] = time.monotonic()
                time.sleep(interval_s)

        threading.Thread(target=beat, name="edgewise-heartbeat", daemon=True).start()

    def silent_ranks(self, ranks: range, timeout_s: float) -> list[tuple[int, float]]:
        """(rank, seconds since its last beat) of ``ranks`` that have beaten once and not since ``timeout_s``."""
        now = time.monotonic()
        return [(rank, now - self.slots[rank]) for rank in ranks
                if self.slots[rank] and now - self.slots[rank] > timeout_s]
