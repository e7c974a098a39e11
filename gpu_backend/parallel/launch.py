"""Starting a sharded worker's ranks: as processes of this machine, or under torchrun.

``spawn_worker`` starts every rank as a fresh process (``spawn``: CUDA cannot be forked) that
joins a world over a loopback TCP store; rank 0 gets one end of a pipe to the service. Under
``torchrun`` the launcher has started the ranks already (``torchrun_env`` reads their place):
rank 0 starts the service in a child process instead (see ``wrangler_like_cli/backend.py``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from ..config import EngineConfig, ParallelConfig
from .worker import run_rank

STOP_WAIT_S = 10.0


@dataclass
class RankProcesses:
    """One start of a worker: its rank processes (none when torchrun owns them) and the driver's pipe."""

    processes: list[BaseProcess]
    connection: Connection

    def exited_rank(self, skip: int | None = None) -> tuple[int, int | None] | None:
        """(rank, exit code) of a rank that is no longer running (other than ``skip``), if any."""
        for rank, process in enumerate(self.processes):
            if rank != skip and not process.is_alive():
                return rank, process.exitcode
        return None

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Let the ranks leave on their own for up to ``wait_s``, then kill what is left."""
        for process in self.processes:
            process.join(timeout=wait_s)
            wait_s = 0.0 if process.is_alive() else wait_s
        self.kill()

    def kill(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join(timeout=STOP_WAIT_S)
        self.connection.close()


def spawn_worker(config: EngineConfig, parallel: ParallelConfig) -> RankProcesses:
    context = mp.get_context("spawn")
    service_end, driver_end = context.Pipe()
    init_method = f"tcp://127.0.0.1:{free_port()}"
    world_size = parallel.world_size
    processes = []
    for rank in range(world_size):
        process = context.Process(target=run_rank, name=f"edgewise-rank-{rank}", daemon=True,
                                  args=(rank, world_size, config, parallel, init_method,
                                        driver_end if rank == 0 else None))
        process.start()
        processes.append(process)
    driver_end.close()  # rank 0 holds its own copy: the service sees EOF once rank 0 is gone
    return RankProcesses(processes, service_end)


@dataclass(frozen=True)
class TorchrunPlace:
    rank: int
    world_size: int
    local_rank: int


def torchrun_env() -> TorchrunPlace | None:
    """This process's place when torchrun started it (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or "RANK" not in os.environ:
        return None
    return TorchrunPlace(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
