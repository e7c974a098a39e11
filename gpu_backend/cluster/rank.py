"""What every rank of a sharded instance runs: join the world, build its shard, then drive or follow.

An instance is one ``torch.distributed`` world of ``tp_size × pp_size`` ranks (NCCL on GPUs, Gloo
on CPU), laid out by ``groups.InstanceLayout``. Each rank builds only its pipeline stage's layers
and its tensor-cluster slices, reading only those from the checkpoint. The ranks agree on the
number of KV blocks (the smallest any of them can hold: one block manager, on the driver, hands
out block ids for all of them). Rank 0 is the driver; the others follow its steps.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from ..config import EngineConfig, ModelConfig
from ..engine.core import EngineCore
from ..parallel.comm import ControlPlane, min_over, token_group
from ..parallel.groups import InstanceLayout, build_groups
from ..parallel.pipeline import stage_of
from ..parallel.state import TensorParallel, set_tensor_parallel
from .config import ClusterConfig
from .driver import Driver, DriverPipe
from .heartbeat import Heartbeats
from .protocol import Failed
from .roles import RankRoles, RankWorld
from .stage_runner import DriverRunner, StageRunner

log = logging.getLogger(__name__)
# Followers wait on the control group between steps, for as long as the service stays idle.
CONTROL_TIMEOUT = timedelta(days=7)


def run_rank(rank: int, world_size: int, config: EngineConfig, cluster: ClusterConfig, init_method: str,
             connection: Connection | None = None, local_rank: int | None = None,
             heartbeats: Heartbeats | None = None, roles: RankRoles | None = None) -> None:
    """One rank's whole life; each instance's first rank (its driver) needs its connection to the service."""
    if heartbeats is not None:
        heartbeats.start_beating(rank, cluster.heartbeat_interval_s)
    config = _rank_device(config, rank if local_rank is None else local_rank, world_size)
    backend = "nccl" if config.torch_device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=cluster.instance_timeout_s))
    try:
        _serve(rank, config, cluster, connection, roles)
    except BaseException as error:
        if connection is not None:
            _report(connection, f"rank {rank}: {type(error).__name__}: {error}")
        raise
    finally:
        set_tensor_parallel(TensorParallel())
    dist.destroy_process_group()


def instance_layouts(cluster: ClusterConfig) -> list[InstanceLayout]:
    """The world's instances, one after another in rank order (``ClusterConfig.instances``)."""
    layouts, first = [], 0
    for spec in cluster.instances:
        layouts.append(InstanceLayout(first, spec.tp_size, spec.pp_size))
        first += spec.size
    return layouts


def _serve(rank: int, config: EngineConfig, cluster: ClusterConfig, connection: Connection | None,
           roles: RankRoles | None) -> None:
    instances, specs = instance_layouts(cluster), cluster.instances
    timeout = timedelta(seconds=cluster.instance_timeout_s)  # every group's collectives
    control_group, tokens = _instance_groups(instances, rank, timeout)
    place = build_groups(instances, rank, timeout)
    set_tensor_parallel(place.tensor_parallel())
    model_config = ModelConfig.from_pretrained(config.model)
    mine = instances.index(place.instance)
    stage = stage_of(place.pp_rank, specs[mine].pp_size, model_config.num_hidden_layers, specs[mine].pp_layers)
    instance = place.instance
    control = ControlPlane(control_group, instance.first_rank, [r for r in instance.ranks if r != instance.first_rank],
                           timeout)
    world = RankWorld(rank, instances, specs, mine, model_config, timeout, control_group)
    if rank != instance.first_rank:
        runner = StageRunner(config, model_config, place, stage, token_group=tokens)
        _agree_on_num_blocks(runner, control_group)
        part = roles(world, runner) if roles is not None else None
        runner.follow(control, {part.name: part} if part is not None else {})
        return
    if connection is None:
        raise ValueError(f"rank {rank} drives its instance: it needs the connection to the service")
    driver_runner = DriverRunner(config, model_config, place, stage, control, token_group=tokens)
    _agree_on_num_blocks(driver_runner, control_group)
    part = roles(world, driver_runner) if roles is not None else None
    engine = EngineCore(config, progress=False, runner=driver_runner)
    pipe = DriverPipe(connection)
    Driver(engine, driver_runner, pipe, part.driver_roles(engine, pipe.send) if part is not None else []).serve()


def _instance_groups(instances: list[InstanceLayout], rank: int,
                   timeout: timedelta) -> tuple[dist.ProcessGroup, dist.ProcessGroup | None]:
    """This rank's instance's control group and token group (every rank makes every instance's: collective)."""
    control, tokens = None, None
    for instance in instances:
        group = dist.new_group(list(instance.ranks), backend="gloo", timeout=CONTROL_TIMEOUT)
        last = instance.rank_of(instance.pp_size - 1, 0)
        pair = token_group(instance.first_rank, last, timeout) if instance.pp_size > 1 else None
        if rank in instance.ranks:
            control, tokens = group, pair
    assert control is not None, f"rank {rank} is in no instance"
    return control, tokens


def _agree_on_num_blocks(runner: StageRunner, group: dist.ProcessGroup) -> None:
    """Every rank uses as many KV blocks as the rank with the least room holds."""
    runner.num_blocks = min_over(group, runner.num_blocks)


def _rank_device(config: EngineConfig, local_rank: int, world_size: int) -> EngineConfig:
    """One GPU per rank (by local rank); on CPU, the cores shared out between the ranks."""
    if config.torch_device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return replace(config, device=str(device))
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))  # set by torchrun
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks_here))
    return replace(config, device="cpu")


def _report(connection: Connection, text: str) -> None:
    try:
        connection.send(Failed(text))
    except (OSError, EOFError, BrokenPipeError):
        pass
