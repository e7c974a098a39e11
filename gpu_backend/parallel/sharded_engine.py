"""``ShardedEngine``: a TP×PP worker seen from the service process, used as an ``AsyncLLM`` is.

Each request goes to the worker's driver (rank 0) over a pipe; its outputs come back to the
request's async iterator, and leaving the iterator early aborts it on the worker. A monitor
thread reads the driver's messages and watches the ranks. A rank that exits, an error the
driver reports, or silence longer than ``ParallelConfig.timeout_s`` (the driver speaks at least
once a second) is a lost worker: every running request ends with ``WorkerLostError``, the
remaining ranks are killed, ``error`` says why (``/healthz`` reports it), and the worker is
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

from ..config import EngineConfig, ParallelConfig
from ..engine.sampling_params import SamplingParams
from ..engine.thread_bridge import post, settle
from ..errors import EngineError, InvalidRequestError, WorkerLostError
from ..tokenizer import Tokenizer
from .driver import WorkerInfo, WorkerLoad, WorkerOutput
from .launch import RankProcesses, spawn_worker

log = logging.getLogger(__name__)
POLL_S = 0.1
ROOT_CAUSE_WAIT_S = 0.5  # for a dead rank's exit to show once its peers have noticed it


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue  # WorkerOutput, or the exception that ends the stream
    accepted: asyncio.Future


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
        self._outbox: queue.Queue = queue.Queue()
        self._load = WorkerLoad(0, 0, 0, 0, 0)
        self._ranks, self.info = self._start(attached)
        self._last_heard = time.monotonic()
        threading.Thread(target=self._send_loop, name="edgewise-worker-send", daemon=True).start()
        self._monitor = threading.Thread(target=self._watch, name="edgewise-worker-monitor", daemon=True)
        self._monitor.start()

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self.info.max_num_seqs

    # -- requests ------------------------------------------------------------------------------

    async def generate(self, prompt: str | list[int], params: SamplingParams | None, request_id: str
                       ) -> AsyncIterator[WorkerOutput]:
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue(), loop.create_future())
        with self._lock:
            if self.error is not None:
                raise WorkerLostError(self.error)
            if request_id in self._streams:
                raise InvalidRequestError(f"request id {request_id!r} is already running")
            self._streams[request_id] = stream
            self._outbox.put(("add", request_id, prompt, params))
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

    def _abort(self, request_id: str) -> None:
        with self._lock:
            if self._streams.pop(request_id, None) is not None and self.error is None:
                self._outbox.put(("abort", request_id))

    def rank_pids(self) -> list[int]:
        """Process ids of the running ranks (by rank; empty when torchrun started them)."""
        return [process.pid for process in self._ranks.processes if process.pid is not None]

    def stats(self) -> dict[str, int]:
        load = self._load
        return {"num_running": load.num_running, "num_waiting": load.num_waiting,
                "kv_blocks_free": load.kv_blocks_free, "kv_blocks_used": load.kv_blocks_used,
                "num_preemptions": load.num_preemptions}

    def shutdown(self) -> None:
        """Stop the ranks; requests still running end with an EngineError."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._outbox.put(("stop",))
        self._outbox.put(None)
        self._monitor.join(timeout=POLL_S * 10)
        self._ranks.stop()
        self._end_streams(EngineError("the engine was shut down"))

    # -- starting ------------------------------------------------------------------------------

    def _start(self, attached: RankProcesses | None = None) -> tuple[RankProcesses, WorkerInfo]:
        ranks = attached or spawn_worker(self.config, self.parallel)
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while time.monotonic() < deadline:
                if ranks.connection.poll(POLL_S):
                    message = ranks.connection.recv()
                    if message[0] == "ready":
                        return ranks, message[1]
                    if message[0] == "error":
                        raise EngineError(f"the worker failed to start: {message[1]}")
                exited = ranks.exited_rank()
                if exited is not None:
                    raise EngineError(f"rank {exited[0]} exited with code {exited[1]} while the worker started")
            raise EngineError(f"the worker was not ready within {self.ready_timeout_s:.0f} s")
        except (EOFError, OSError) as error:
            ranks.kill()
            raise EngineError(f"the worker failed to start: rank 0's pipe closed ({error!r})") from None
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
        """Read one message; the reason the worker is lost, if it is."""
        try:
            if self._ranks.connection.poll(POLL_S):
                message = self._ranks.connection.recv()
                self._last_heard = time.monotonic()
                if message[0] == "error":
                    return self._root_cause(f"the worker reported an error: {message[1]}")
                self._dispatch(message)
        except (EOFError, OSError):
            return self._root_cause("rank 0's pipe closed")
        exited = self._ranks.exited_rank()
        if exited is not None:
            return f"rank {exited[0]} exited with code {exited[1]}"
        silent_s = time.monotonic() - self._last_heard
        if silent_s > self.parallel.timeout_s:
            return f"no word from the worker in {silent_s:.1f} s (timeout {self.parallel.timeout_s:g} s): a rank hung"
        return None

    def _root_cause(self, symptom: str) -> str:
        """A rank that died makes rank 0 fail too: name the dead one when there is one."""
        deadline = time.monotonic() + ROOT_CAUSE_WAIT_S
        while True:
            exited = self._ranks.exited_rank(skip=0)
            if exited is not None:
                return f"rank {exited[0]} exited with code {exited[1]}"
            if time.monotonic() > deadline:
                return symptom
            time.sleep(POLL_S / 2)

    def _dispatch(self, message: tuple) -> None:
        kind = message[0]
        if kind == "step":
            _, outputs, self._load = message
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
            self._last_heard = time.monotonic()
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
            message = self._outbox.get()
            if message is None:
                return
            try:
                self._ranks.connection.send(message)
            except (OSError, EOFError, ValueError):  # the worker is gone; the monitor deals with it
                pass
