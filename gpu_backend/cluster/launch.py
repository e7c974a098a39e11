"""Starting a sharded instance's ranks: as processes of this machine, or under torchrun.

``spawn_world`` starts every rank as a process forked from a fork server (``rank_context``: a
fresh interpreter that has imported torch and never touches CUDA, so no CUDA state is forked) that
joins a world over a loopback TCP store; each instance's first rank gets one end of a pipe to the
service, and every rank beats in a shared ``Heartbeats`` array the service watches. Under
``torchrun`` the launcher has started the ranks already (``torchrun_env`` reads their place):
rank 0 starts the service in a child process instead (see ``wrangler_like_cli/backend.py``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

from ..config import EngineConfig
from .config import ClusterConfig
from .heartbeat import Heartbeats
from .rank import run_rank, instance_layouts
from .roles import RankRoles

STOP_WAIT_S = 10.0


@dataclass
class RankProcesses:
    """One start of a world: its rank processes (none when torchrun owns them), each instance's
    driver pipe and ranks, and the ranks' heartbeats (None under torchrun)."""

    processes: list[BaseProcess]
    connections: list[Connection]
    instance_ranks: list[range]
    heartbeats: Heartbeats | None = None

    @property
    def driver_ranks(self) -> list[int]:
        return [ranks.start for ranks in self.instance_ranks]

    def instance_of(self, rank: int) -> int:
        return next(instance for instance, ranks in enumerate(self.instance_ranks) if rank in ranks)

    def exited_rank(self) -> tuple[int, int | None] | None:
        """(rank, exit code) of a rank that is no longer running (while the world starts)."""
        for rank, process in enumerate(self.processes):
            if not process.is_alive():
                return rank, process.exitcode
        return None

    def kill_instance(self, instance: int) -> None:
        """Kill one instance's ranks, leaving the others serving."""
        mine = [self.processes[rank] for rank in self.instance_ranks[instance] if rank < len(self.processes)]
        for process in mine:
            if process.is_alive():
                process.kill()
        for process in mine:
            process.join(timeout=STOP_WAIT_S)

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
        for connection in self.connections:
            connection.close()


def rank_context() -> BaseContext:
    """Where ranks are started from: a fork server that imported torch and the rank code once.

    A rank forked from it starts in a fraction of a second instead of importing torch afresh
    (seconds of CPU each), which counts at every start and restart of an instance. The server is
    a fresh interpreter that never touches CUDA, so no CUDA state is ever forked."""
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([run_rank.__module__])
    return context


def spawn_world(config: EngineConfig, cluster: ClusterConfig, roles: RankRoles | None = None) -> RankProcesses:
    """Every rank of ``cluster.instances``, each instance's first rank with a pipe to us;
    ``roles``: what each rank adds (``roles.RankRoles``)."""
    context = rank_context()
    drivers = [instance.first_rank for instance in instance_layouts(cluster)]
    pipes = {rank: context.Pipe() for rank in drivers}
    init_method = f"tcp://127.0.0.1:{free_port()}"
    world_size = cluster.world_size
    heartbeats = Heartbeats(context, world_size)
    processes = []
    for rank in range(world_size):
        driver_end = pipes[rank][1] if rank in pipes else None
        process = context.Process(target=run_rank, name=f"edgewise-rank-{rank}", daemon=True,
                                  args=(rank, world_size, config, cluster, init_method, driver_end),
                                  kwargs={"heartbeats": heartbeats, "roles": roles})
        process.start()
        processes.append(process)
    for _, driver_end in pipes.values():
        driver_end.close()  # the driver holds its own copy: we see EOF once it is gone
    return RankProcesses(processes, [pipes[rank][0] for rank in drivers],
                         [layout.ranks for layout in instance_layouts(cluster)], heartbeats)


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
