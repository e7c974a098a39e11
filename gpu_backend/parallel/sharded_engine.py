"""``ShardedEngine``: TP×PP workers seen from the service process, used as an ``AsyncLLM`` is.

The world holds ``ParallelConfig.num_workers`` workers (colocated replicas). Each request goes
to the least loaded worker's driver (its first rank) over that worker's pipe; its outputs come
back to the request's async iterator, and leaving the iterator early aborts it on the worker.
A monitor thread reads the drivers' messages and watches the ranks. A rank that exits, an error
a driver reports, or a driver silent longer than ``ParallelConfig.timeout_s`` (a driver speaks
at least once a second) loses the world: every running request ends with ``WorkerLostError``,
the remaining ranks are killed, ``error`` says why (``/healthz`` reports it), and the world is
started again, up to ``max_restarts`` times, while the service keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from multiprocessing.connection import wait

from ..config import EngineConfig, ParallelConfig
from ..engine.sampling_params import SamplingParams
from ..engine.thread_bridge import post, settle
from ..errors import EngineError, InvalidRequestError, WorkerLostError
from ..tokenizer import Tokenizer
from .driver import WorkerInfo, WorkerLoad, WorkerOutput
from .launch import RankProcesses, spawn_world

log = logging.getLogger(__name__)
POLL_S = 0.1
ROOT_CAUSE_WAIT_S = 0.5  # for a dead rank's exit to show once its peers have noticed it


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue  # WorkerOutput, or the exception that ends the stream
    accepted: asyncio.Future
    worker: int


class ShardedEngine:
    def __init__(self, config: EngineConfig, parallel: ParallelConfig, *, max_restarts: int = 3,
                 ready_timeout_s: float = 900.0, attached: RankProcesses | None = None) -> None:
        """``attached``: a driver started by someone else (torchrun); it is never restarted from here."""
        self.config, self.parallel = config, parallel
        self.max_restarts = 0 if attached is not None else max_restarts
        self.ready_timeout_s = ready_timeout_s
        self.tokenizer = None if config.skip_tokenizer_init else Tokenizer.from_pretrained(config.model)
        self.error: str | None = None
        self.restarts = 0
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._outbox: queue.Queue = queue.Queue()  # (worker, message)
        self._ranks, self.info = self._start(attached)
        self._loads = [WorkerLoad(0, 0, 0, 0, 0)] * parallel.num_workers
        self._last_heard = [time.monotonic()] * parallel.num_workers
        self.requests_per_worker = [0] * parallel.num_workers  # routed so far
        threading.Thread(target=self._send_loop, name="edgewise-worker-send", daemon=True).start()
        self._monitor = threading.Thread(target=self._watch, name="edgewise-worker-monitor", daemon=True)
        self._monitor.start()

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self.info.max_num_seqs * self.parallel.num_workers

    # -- requests ------------------------------------------------------------------------------

    async def generate(self, prompt: str | list[int], params: SamplingParams | None, request_id: str
                       ) -> AsyncIterator[WorkerOutput]:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.error is not None:
                raise WorkerLostError(self.error)
            if request_id in self._streams:
                raise InvalidRequestError(f"request id {request_id!r} is already running")
            stream = _Stream(loop, asyncio.Queue(), loop.create_future(), self._pick_worker())
            self._streams[request_id] = stream
            self.requests_per_worker[stream.worker] += 1
            self._outbox.put((stream.worker, ("add", request_id, prompt, params)))
        finished = False
        try:
            await stream.accepted
            while not finished:
                item = await stream.outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._abort(request_id)

    def _pick_worker(self) -> int:
        """The worker with the fewest requests of ours running, then the fewest KV blocks in use."""
        active = [0] * self.parallel.num_workers
        for stream in self._streams.values():
            active[stream.worker] += 1
        return min(range(len(active)), key=lambda worker: (active[worker], self._loads[worker].kv_blocks_used))

    def _abort(self, request_id: str) -> None:
        with self._lock:
            stream = self._streams.pop(request_id, None)
            if stream is not None and self.error is None:
                self._outbox.put((stream.worker, ("abort", request_id)))

    def rank_pids(self) -> list[int]:
        """Process ids of the running ranks (by rank; empty when torchrun started them)."""
        return [process.pid for process in self._ranks.processes if process.pid is not None]

    def stats(self) -> dict[str, int]:
        """Summed over the workers."""
        return {name: sum(getattr(load, name) for load in self._loads) for name in
                ("num_running", "num_waiting", "kv_blocks_free", "kv_blocks_used", "num_preemptions")}

    def shutdown(self) -> None:
        """Stop the ranks; requests still running end with an EngineError."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for worker in range(self.parallel.num_workers):
            self._outbox.put((worker, ("stop",)))
        self._outbox.put(None)
        self._monitor.join(timeout=POLL_S * 10)
        self._ranks.stop()
        self._end_streams(EngineError("the engine was shut down"))

    # -- starting ------------------------------------------------------------------------------

    def _start(self, attached: RankProcesses | None = None) -> tuple[RankProcesses, WorkerInfo]:
        """Start the world (or take torchrun's) and wait until every driver is ready."""
        ranks = attached or spawn_world(self.config, self.parallel)
        deadline = time.monotonic() + self.ready_timeout_s
        waiting, info = set(range(len(ranks.connections))), None
        try:
            while waiting and time.monotonic() < deadline:
                for worker in list(waiting):
                    if ranks.connections[worker].poll(POLL_S / len(ranks.connections)):
                        message = ranks.connections[worker].recv()
                        if message[0] == "error":
                            raise EngineError(f"the worker failed to start: {message[1]}")
                        if message[0] == "ready":
                            waiting.discard(worker)
                            info = message[1]
                exited = ranks.exited_rank()
                if exited is not None:
                    raise EngineError(f"rank {exited[0]} exited with code {exited[1]} while the worker started")
            if waiting or info is None:
                raise EngineError(f"the worker was not ready within {self.ready_timeout_s:.0f} s")
            return ranks, info
        except (EOFError, OSError) as error:
            ranks.kill()
            raise EngineError(f"the worker failed to start: a driver's pipe closed ({error!r})") from None
        except BaseException:
            ranks.kill()
            raise

    # -- the monitor thread --------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopped.is_set():
            reason = self._poll()
            if reason is not None and not self._stopped.is_set():
                self._lose(reason)
                if not self._restart():
                    return

    def _poll(self) -> str | None:
        """Read what the drivers sent; the reason the world is lost, if it is."""
        connections = self._ranks.connections
        for connection in wait(connections, timeout=POLL_S):
            worker = connections.index(connection)
            try:
                message = connection.recv()
            except (EOFError, OSError):
                return self._root_cause(f"the pipe of worker {worker}'s driver closed", worker)
            self._last_heard[worker] = time.monotonic()
            if message[0] == "error":
                return self._root_cause(f"worker {worker} reported an error: {message[1]}", worker)
            self._dispatch(message, worker)
        exited = self._ranks.exited_rank()
        if exited is not None:
            return f"rank {exited[0]} exited with code {exited[1]}"
        now = time.monotonic()
        for worker, heard in enumerate(self._last_heard):
            if now - heard > self.parallel.timeout_s:
                return (f"no word from worker {worker} in {now - heard:.1f} s (timeout "
                        f"{self.parallel.timeout_s:g} s): a rank hung")
        return None

    def _root_cause(self, symptom: str, worker: int) -> str:
        """A rank that died makes its driver fail too: name the dead one when there is one."""
        deadline = time.monotonic() + ROOT_CAUSE_WAIT_S
        while True:
            exited = self._ranks.exited_rank(skip=self._ranks.driver_ranks[worker])
            if exited is not None:
                return f"rank {exited[0]} exited with code {exited[1]}"
            if time.monotonic() > deadline:
                return symptom
            time.sleep(POLL_S / 2)

    def _dispatch(self, message: tuple, worker: int) -> None:
        kind = message[0]
        if kind == "step":
            _, outputs, self._loads[worker] = message
            for output in outputs:
                with self._lock:
                    stream = (self._streams.pop if output.finished else self._streams.get)(output.request_id, None)
                if stream is not None:
                    post(stream.loop, stream.outputs.put_nowait, output)
        elif kind in ("accepted", "rejected"):
            error = message[2] if kind == "rejected" else None
            with self._lock:
                stream = self._streams.get(message[1]) if error is None else self._streams.pop(message[1], None)
            if stream is not None:
                post(stream.loop, settle, stream.accepted, error)

    def _lose(self, reason: str) -> None:
        log.error("worker of %s lost: %s", self.config.model, reason)
        with self._lock:
            self.error = reason
        self._ranks.kill()
        self._end_streams(WorkerLostError(reason))

    def _restart(self) -> bool:
        while self.restarts < self.max_restarts and not self._stopped.is_set():
            self.restarts += 1
            log.warning("restarting the worker of %s (restart %d of %d)", self.config.model, self.restarts,
                        self.max_restarts)
            try:
                self._ranks, self.info = self._start()
            except EngineError as error:
                with self._lock:
                    self.error = f"{self.error}; restart {self.restarts} failed: {error}"
                continue
            self._last_heard = [time.monotonic()] * self.parallel.num_workers
            with self._lock:
                self.error = None
            return True
        return False

    def _end_streams(self, error: EngineError) -> None:
        with self._lock:
            streams, self._streams = self._streams, {}
            while not self._outbox.empty():  # what was meant for the lost worker
                self._outbox.get_nowait()
        for stream in streams.values():
            post(stream.loop, settle, stream.accepted, error)
            post(stream.loop, stream.outputs.put_nowait, error)

    def _send_loop(self) -> None:
        """Writes to the driver's pipe on a thread of their own: a full pipe never blocks the event loop."""
        while True:
            item = self._outbox.get()
            if item is None:
                return
            worker, message = item
            try:
                self._ranks.connections[worker].send(message)
            except (OSError, EOFError, ValueError):  # the worker is gone; the monitor deals with it
                pass
