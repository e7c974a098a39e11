"""A sharded engine's running world, seen from the service: its rank processes, each driver's
pipe (read here, written through the ``Outbox``), each worker's load and health.

``start`` spawns the ranks (or takes the ones torchrun started) and waits until every driver is
ready; ``poll`` reads what the drivers sent and finds the workers that were lost. What a loss
means for the requests is ``recovery``'s; the engine's lock guards ``health.lost`` and ``loads``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from multiprocessing.connection import wait

from ..config import EngineConfig, ParallelConfig
from ..errors import EngineError
from .health import POLL_S, WorkerHealth
from .launch import RankProcesses, spawn_world
from .outbox import Outbox
from .protocol import NO_LOAD, Failed, Ready, StepDone, WorkerInfo, WorkerLoad
from .roles import RankRoles


class World:
    def __init__(self, config: EngineConfig, parallel: ParallelConfig, rank_roles: RankRoles | None = None,
                 ready_timeout_s: float = 900.0, attached: RankProcesses | None = None) -> None:
        """``rank_roles``: what each rank adds (``roles``); ``attached``: ranks torchrun started."""
        self.config, self.parallel, self.rank_roles = config, parallel, rank_roles
        self.ready_timeout_s = ready_timeout_s
        self.num_workers = len(parallel.worker_specs())
        self.ranks, self.info = self.start(attached)
        self.health = WorkerHealth(self.ranks, parallel)
        self.loads: list[WorkerLoad] = [NO_LOAD] * self.num_workers
        self.outbox = Outbox(self.num_workers, lambda: self.ranks.connections)

    def start(self, attached: RankProcesses | None = None) -> tuple[RankProcesses, WorkerInfo]:
        """Start the ranks (or take torchrun's) and wait until every driver is ready."""
        ranks = attached or spawn_world(self.config, self.parallel, self.rank_roles)
        try:
            return ranks, self._wait_ready(ranks)
        except (EOFError, OSError) as error:
            ranks.kill()
            raise EngineError(f"the worker failed to start: a driver's pipe closed ({error!r})") from None
        except BaseException:
            ranks.kill()
            raise

    def adopt(self, ranks: RankProcesses, info: WorkerInfo) -> None:
        """Serve with a world started again (under the engine's lock)."""
        self.ranks, self.info, self.health = ranks, info, WorkerHealth(ranks, self.parallel)
        self.loads = [NO_LOAD] * self.num_workers

    def send(self, worker: int, message: object) -> None:
        self.outbox.put(worker, message)

    def lose(self, worker: int, reason: str) -> None:
        """Count the worker lost (under the engine's lock); ``kill_worker`` ends its ranks."""
        self.health.lost[worker] = reason
        self.loads[worker] = NO_LOAD

    def kill_worker(self, worker: int) -> None:
        self.ranks.kill_worker(worker)

    def rank_pids(self, worker: int | None = None) -> list[int]:
        """Process ids of the running ranks, by rank, of one worker or all (none when torchrun started them)."""
        ranks = range(len(self.ranks.processes)) if worker is None else self.ranks.worker_ranks[worker]
        return [pid for rank in ranks if (pid := self.ranks.processes[rank].pid) is not None]

    def poll(self, dispatch: Callable[[object, int], None]) -> list[tuple[int, str]]:
        """Read what the live drivers sent (each message to ``dispatch``, with its worker);
        (worker, why) of each worker found lost."""
        connections = {self.ranks.connections[worker]: worker for worker in self.health.live_workers}
        losses = {}
        ready = wait([*connections, *self.health.sentinels()], timeout=POLL_S) if connections else []
        self.health.note_deaths()  # first: a driver's word may be about a rank that just died
        for connection in ready:
            worker = connections.get(connection)
            if worker is None:  # a rank's exit, noted
                continue
            try:
                message = connection.recv()
            except (EOFError, OSError):
                losses[worker] = self.health.root_cause(worker, f"the pipe of worker {worker}'s driver closed")
                continue
            self.health.heard(worker)
            match message:
                case Failed(text):
                    losses[worker] = self.health.root_cause(worker, f"worker {worker} reported an error: {text}")
                case StepDone(_, load):
                    self.loads[worker] = load
                    dispatch(message, worker)
                case _:
                    dispatch(message, worker)
        if not connections:
            time.sleep(POLL_S)
        return list(losses.items()) + [(w, why) for w, why in self.health.check() if w not in losses]

    def _wait_ready(self, ranks: RankProcesses) -> WorkerInfo:
        deadline = time.monotonic() + self.ready_timeout_s
        waiting, info = set(range(len(ranks.connections))), None
        while waiting and time.monotonic() < deadline:
            for worker in list(waiting):
                if not ranks.connections[worker].poll(POLL_S / len(ranks.connections)):
                    continue
                match ranks.connections[worker].recv():
                    case Failed(text):
                        raise EngineError(f"the worker failed to start: {text}")
                    case Ready(info):
                        waiting.discard(worker)
            exited = ranks.exited_rank()
            if exited is not None:
                raise EngineError(f"rank {exited[0]} exited with code {exited[1]} while the worker started")
        if waiting or info is None:
            raise EngineError(f"the worker was not ready within {self.ready_timeout_s:.0f} s")
        return info
