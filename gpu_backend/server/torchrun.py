"""``edgewise backend serve`` under torchrun: every process torchrun starts is a rank of one instance.

The same command runs on every node; torchrun's rendezvous forms the world (``env://``). Rank 0
starts the service (HTTP, WebSocket, the embedders) in a child process and drives the instance's
steps; the other ranks follow. The service talks to the driver over a pipe exactly as it does to
an instance it spawned itself, but it cannot restart it: when a rank fails, torchrun's agent
(``--max-restarts``) restarts the ranks, and rank 0's service with them. A service whose rank 0
is gone shuts itself down, so a restarted rank 0 finds its port free.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..cluster.config import ClusterConfig
from ..config import EngineConfig
from ..engine.embedder import is_embedding_checkpoint
from ..cluster.launch import RankProcesses, TorchrunPlace
from ..cluster.rank import run_rank

PARENT_CHECK_S = 0.5
SHUTDOWN_GRACE_S = 10.0


def serve_ranks(models: Mapping[str, Path], place: TorchrunPlace, cluster: ClusterConfig,
                service_options: dict[str, Any], engine_options: dict[str, Any]) -> None:
    """This process's part: rank 0 serves and drives, the others follow."""
    if len(cluster.instances) != 1 or cluster.is_disaggregated:
        raise ValueError("under torchrun the world is one instance: drop --instances and the prefill/decode instances")
    if place.world_size != cluster.world_size:
        spec = cluster.instances[0]
        raise ValueError(f"torchrun started {place.world_size} ranks but --tp {spec.tp_size} x --pp "
                         f"{spec.pp_size} needs {cluster.world_size}: set --nnodes x --nproc-per-node to match")
    config = EngineConfig(model=str(_text_model(models)), **engine_options)
    if place.rank != 0:
        run_rank(place.rank, place.world_size, config, cluster, "env://", local_rank=place.local_rank)
        return
    context = mp.get_context("spawn")
    service_end, driver_end = context.Pipe()
    service = context.Process(target=_service, name="edgewise-service", daemon=True,
                              args=(dict(models), cluster, service_end, service_options, engine_options))
    service.start()
    service_end.close()
    try:
        run_rank(0, place.world_size, config, cluster, "env://", driver_end, place.local_rank)
    finally:
        service.join(timeout=SHUTDOWN_GRACE_S)
        if service.is_alive():
            service.terminate()


def _text_model(models: Mapping[str, Path]) -> Path:
    folders = {Path(folder).resolve() for folder in models.values() if not is_embedding_checkpoint(Path(folder))}
    if len(folders) != 1:
        raise ValueError(f"under torchrun the ranks serve one text-generation model; got {len(folders)} "
                         "(embeddings models may be added: they run in the service)")
    return folders.pop()


def _service(models: dict[str, Path], cluster: ClusterConfig, connection: Connection,
             service_options: dict[str, Any], engine_options: dict[str, Any]) -> None:
    from .serve import serve

    _exit_with_parent()
    serve(models, cluster=cluster, attached=RankProcesses([], [connection], [range(cluster.world_size)]),
          **service_options, **engine_options)


def _exit_with_parent() -> None:
    """Shut down (as on Ctrl-C) once rank 0, our parent, is gone; exit outright if that hangs."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(SHUTDOWN_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="edgewise-parent-watch", daemon=True).start()
