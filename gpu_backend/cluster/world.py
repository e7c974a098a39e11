"""A sharded engine's running world, seen from the service: its rank processes, each driver's
pipe (read here, written through the ``Outbox``), each instance's load and health.

``start`` spawns the ranks (or takes the ones torchrun started) and waits until every driver is
ready; ``poll`` reads what the drivers sent and finds the instances that were lost. What a loss
means for the requests is ``recovery``'s; the engine's lock guards ``health.lost`` and ``loads``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from multiprocessing.connection import wait

from ..config import EngineConfig
from ..errors import EngineError
from .config import ClusterConfig
from .health import POLL_S, InstanceHealth
from .launch import RankProcesses, spawn_world
from .outbox import Outbox
from .protocol import NO_LOAD, Failed, Ready, StepDone, InstanceInfo, InstanceLoad
from .roles import RankRoles


class World:
    def __init__(self, config: EngineConfig, cluster: ClusterConfig, rank_roles: RankRoles | None = None,
                 ready_timeout_s: float = 900.0, attached: RankProcesses | None = None) -> None:
        """``rank_roles``: what each rank adds (``roles``); ``attached``: ranks torchrun started."""
        self.config, self.cluster, self.rank_roles = config, cluster, rank_roles
        self.ready_timeout_s = ready_timeout_s
        self.num_instances = len(cluster.instances)
        self.ranks, self.info = self.start(attached)
        self.health = InstanceHealth(self.ranks, cluster)
        self.loads: list[InstanceLoad] = [NO_LOAD] * self.num_instances
        self.outbox = Outbox(self.num_instances, lambda: self.ranks.connections)

    def start(self, attached: RankProcesses | None = None) -> tuple[RankProcesses, InstanceInfo]:
        """Start the ranks (or take torchrun's) and wait until every driver is ready."""
        ranks = attached or spawn_world(self.config, self.cluster, self.rank_roles)
        try:
            return ranks, self._wait_ready(ranks)
        except (EOFError, OSError) as error:
            ranks.kill()
            raise EngineError(f"the instance failed to start: a driver's pipe closed ({error!r})") from None
        except BaseException:
            ranks.kill()
            raise

    def adopt(self, ranks: RankProcesses, info: InstanceInfo) -> None:
        """Serve with a world started again (under the engine's lock)."""
        self.ranks, self.info, self.health = ranks, info, InstanceHealth(ranks, self.cluster)
        self.loads = [NO_LOAD] * self.num_instances

    def send(self, instance: int, message: object) -> None:
        self.outbox.put(instance, message)

    def lose(self, instance: int, reason: str) -> None:
        """Count the instance lost (under the engine's lock); ``kill_instance`` ends its ranks."""
        self.health.lost[instance] = reason
        self.loads[instance] = NO_LOAD

    def kill_instance(self, instance: int) -> None:
        self.ranks.kill_instance(instance)

    def rank_pids(self, instance: int | None = None) -> list[int]:
        """Process ids of the running ranks, by rank, of one instance or all (none when torchrun started them)."""
        ranks = range(len(self.ranks.processes)) if instance is None else self.ranks.instance_ranks[instance]
        return [pid for rank in ranks if (pid := self.ranks.processes[rank].pid) is not None]

    def poll(self, dispatch: Callable[[object, int], None]) -> list[tuple[int, str]]:
        """Read what the live drivers sent (each message to ``dispatch``, with its instance);
        (instance, why) of each instance found lost."""
        connections = {self.ranks.connections[instance]: instance for instance in self.health.live_instances}
        losses = {}
        ready = wait([*connections, *self.health.sentinels()], timeout=POLL_S) if connections else []
        self.health.note_deaths()  # first: a driver's word may be about a rank that just died
        for connection in ready:
            instance = connections.get(connection)
            if instance is None:  # a rank's exit, noted
                continue
            try:
                message = connection.recv()
            except (EOFError, OSError):
                losses[instance] = self.health.root_cause(instance, f"the pipe of instance {instance}'s driver closed")
                continue
            self.health.heard(instance)
            match message:
                case Failed(text):
                    losses[instance] = self.health.root_cause(instance, f"instance {instance} reported an error: {text}")
                case StepDone(_, load):
                    self.loads[instance] = load
                    dispatch(message, instance)
                case _:
                    dispatch(message, instance)
        if not connections:
            time.sleep(POLL_S)
        return list(losses.items()) + [(w, why) for w, why in self.health.check() if w not in losses]

    def _wait_ready(self, ranks: RankProcesses) -> InstanceInfo:
        deadline = time.monotonic() + self.ready_timeout_s
        waiting, info = set(range(len(ranks.connections))), None
        while waiting and time.monotonic() < deadline:
            for instance in list(waiting):
                if not ranks.connections[instance].poll(POLL_S / len(ranks.connections)):
                    continue
                match ranks.connections[instance].recv():
                    case Failed(text):
                        raise EngineError(f"the instance failed to start: {text}")
                    case Ready(info):
                        waiting.discard(instance)
            exited = ranks.exited_rank()
            if exited is not None:
                raise EngineError(f"rank {exited[0]} exited with code {exited[1]} while the instance started")
        if waiting or info is None:
            raise EngineError(f"the instance was not ready within {self.ready_timeout_s:.0f} s")
        return info
