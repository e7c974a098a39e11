"""``ShardedEngine``: TP×PP workers seen from the service process, used as an ``AsyncLLM`` is.

The world holds the workers of ``ParallelConfig.worker_specs``: colocated replicas, or prefill
and decode workers. A request goes to the least loaded worker's driver (its first rank) over
that worker's pipe; its outputs come back to the request's async iterator, and leaving the
iterator early aborts it on the worker. Disaggregated, the least loaded decode worker first
reserves the prompt's blocks, the least loaded prefill worker computes the prompt and the first
token (streamed at once) and pushes the KV into those blocks, and the decode worker, told the
first token, receives the KV and decodes the rest.
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
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from multiprocessing.connection import wait

from ..config import EngineConfig, ParallelConfig
from ..engine.sampling_params import SamplingParams
from ..engine.thread_bridge import post, settle
from ..errors import EngineError, InvalidRequestError, WorkerLostError
from ..tokenizer import Tokenizer
from .driver import WorkerInfo, WorkerLoad, WorkerOutput
from .launch import RankProcesses, spawn_world
from .streams import Stream, resolve
from ..disagg.router import Router

log = logging.getLogger(__name__)
POLL_S = 0.1
RESERVE_RETRY_S = 0.05
ROOT_CAUSE_WAIT_S = 0.5  # for a dead rank's exit to show once its peers have noticed it


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
        self.events: Counter[str] = Counter()  # worker_lost, worker_restarted, request_lost, request_recomputed
        self._streams: dict[str, Stream] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._outbox: queue.Queue = queue.Queue()  # (worker, message)
        self._ranks, self.info = self._start(attached)
        self.roles = [spec.role for spec in parallel.worker_specs()]
        self.router = Router(self.roles)
        self._loads = [WorkerLoad(0, 0, 0, 0, 0)] * len(self.roles)
        self._last_heard = [time.monotonic()] * len(self.roles)
        self.requests_per_worker = [0] * len(self.roles)  # routed so far
        threading.Thread(target=self._send_loop, name="edgewise-worker-send", daemon=True).start()
        self._monitor = threading.Thread(target=self._watch, name="edgewise-worker-monitor", daemon=True)
        self._monitor.start()

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self.info.max_num_seqs * sum(role != "prefill" for role in self.roles)

    # -- requests ------------------------------------------------------------------------------

    async def generate(self, prompt: str | list[int], params: SamplingParams | None, request_id: str,
                       session: str | None = None) -> AsyncIterator[WorkerOutput]:
        """``session``: requests naming the same one go to the same workers (their prefix caches)."""
        loop = asyncio.get_running_loop()
        disaggregated = self.parallel.is_disaggregated
        if disaggregated:
            params = params or SamplingParams()
        if disaggregated or self.tokenizer is not None:  # token ids: the router weighs load in tokens
            prompt = self._token_ids(prompt)
        with self._lock:
            if self.error is not None:
                raise WorkerLostError(self.error)
            if request_id in self._streams:
                raise InvalidRequestError(f"request id {request_id!r} is already running")
            worker = self._pick_worker("prefill" if disaggregated else "colocated", session)
            stream = Stream(loop, asyncio.Queue(), loop.create_future(), worker, prompt=prompt, params=params,
                            prompt_len=len(prompt), session=session)
            self._streams[request_id] = stream
            self.requests_per_worker[stream.worker] += 1
            if not disaggregated:
                self._outbox.put((stream.worker, ("add", request_id, prompt, params)))
        finished = False
        try:
            if disaggregated:
                await self._start_handoff(stream, request_id, prompt, params)  # type: ignore[arg-type]
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

    def _pick_worker(self, role: str, session: str | None = None) -> int:
        return self.router.pick(role, self._streams.values(), self._loads, session)

    def _token_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        if self.tokenizer is None:
            raise InvalidRequestError("this model was loaded without a tokenizer; send token ids")
        return self.tokenizer.encode(prompt)

    async def _start_handoff(self, stream: Stream, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        """Reserve the decode worker's blocks (unless one token is all that is asked for), then prefill."""
        handoff = None
        if params.max_tokens is None or params.max_tokens > 1:
            with self._lock:
                stream.decode_worker = self._pick_worker("decode", stream.session)
            blocks = await self._reserve(stream, request_id, prompt, params)
            handoff = (stream.decode_worker, blocks)
        with self._lock:
            if self.error is not None:
                raise WorkerLostError(self.error)
            self._outbox.put((stream.worker, ("prefill", request_id, prompt, params, handoff)))
            stream.prefilling = True

    async def _reserve(self, stream: Stream, request_id: str, prompt: list[int], params: SamplingParams) -> list[int]:
        """Blocks on the decode worker; while none are free, ask again, up to the worker timeout."""
        deadline = time.monotonic() + self.parallel.timeout_s
        while True:
            stream.reserved = stream.loop.create_future()
            with self._lock:
                self._outbox.put((stream.decode_worker, ("reserve", request_id, prompt, params)))
            blocks = await stream.reserved
            if blocks is not None:
                return blocks
            if time.monotonic() > deadline:
                raise EngineError(f"no KV blocks came free on decode worker {stream.decode_worker} within "
                                  f"{self.parallel.timeout_s:g} s")
            await asyncio.sleep(RESERVE_RETRY_S)

    def _abort(self, request_id: str) -> None:
        with self._lock:
            stream = self._streams.get(request_id)
            if stream is None or self.error is not None:
                self._streams.pop(request_id, None)
                return
            if stream.decode_worker is not None and not stream.prefilling:  # left while blocks were reserved
                self._outbox.put((stream.decode_worker, ("abort", request_id)))
                del self._streams[request_id]
                return
            self._outbox.put((stream.worker, ("abort", request_id)))
            if stream.decode_worker is None or stream.worker == stream.decode_worker:
                del self._streams[request_id]
            else:  # still prefilling: what becomes of the decode worker's blocks depends on how prefill ends
                stream.abandoned = True

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
        for worker in range(len(self.roles)):
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
                recompute = self.parallel.on_worker_loss == "recompute" and self.restarts < self.max_restarts
                self._lose(reason, keep_streams=recompute)
                restarted = self._restart()
                if recompute and restarted:
                    self._resume_streams()
                elif recompute:
                    self._end_streams(WorkerLostError(self.error or reason))
                if not restarted:
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
                self._deliver(output, worker)
        elif kind in ("accepted", "rejected"):
            error = message[2] if kind == "rejected" else None
            with self._lock:
                stream = self._streams.get(message[1]) if error is None else self._streams.pop(message[1], None)
            if stream is not None:
                post(stream.loop, settle, stream.accepted, error)
                if error is not None:  # reaches a request submitted again after a lost world too
                    post(stream.loop, stream.outputs.put_nowait, error)
                if error is not None and stream.reserved is not None:
                    post(stream.loop, settle, stream.reserved, error)
        elif kind == "reserved":
            with self._lock:
                stream = self._streams.get(message[1])
            if stream is not None and stream.reserved is not None:
                post(stream.loop, resolve, stream.reserved, message[2])

    def _deliver(self, output: WorkerOutput, worker: int) -> None:
        with self._lock:
            stream = self._streams.get(output.request_id)
            if stream is None or worker != stream.worker:
                return
            if stream.decode_worker is not None and worker != stream.decode_worker and output.finished:
                output = self._end_prefill(stream, output, worker)
            if output.finished:
                self._streams.pop(output.request_id, None)
            output = stream.as_first_submitted(output)
        if not stream.abandoned:
            post(stream.loop, stream.outputs.put_nowait, output)

    def _end_prefill(self, stream: Stream, output: WorkerOutput, worker: int) -> WorkerOutput:
        """The prefill worker's last word on a request: its first token goes to the decode worker,
        which takes over (its KV is on the way), or the request ended there and its blocks are freed."""
        decode = stream.decode_worker
        assert decode is not None
        if output.finish_reason != "length":  # a stop token, or aborted: nothing to decode
            self._outbox.put((decode, ("abort", output.request_id)))
            return output
        self._outbox.put((decode, ("admit", output.request_id, output.delta_token_ids[-1], worker)))
        stream.worker = decode
        if stream.abandoned:  # take the KV the prefill worker is sending, then let it go
            self._outbox.put((decode, ("abort", output.request_id)))
            return replace(output, finish_reason="abort")
        return replace(output, finished=False, finish_reason=None)

    def _lose(self, reason: str, keep_streams: bool = False) -> None:
        """Kill what is left of the world; its requests end with the reason, or wait to be recomputed."""
        log.error("worker of %s lost: %s", self.config.model, reason)
        with self._lock:
            self.error = reason
            self._drain_outbox()
            self.events["worker_lost"] += 1
        self._ranks.kill()
        if not keep_streams:
            self._end_streams(WorkerLostError(reason))

    def _resume_streams(self) -> None:
        """Submit every request of the lost world again: its prompt and the tokens the client already
        has are computed anew, and the stream goes on from where it was."""
        with self._lock:
            streams = [(request_id, stream) for request_id, stream in self._streams.items() if not stream.abandoned]
            self._streams = dict(streams)
            self.events["request_recomputed"] += len(streams)
        for request_id, stream in streams:
            asyncio.run_coroutine_threadsafe(self._resume(request_id, stream), stream.loop)

    async def _resume(self, request_id: str, stream: Stream) -> None:
        try:
            prompt = [*self._token_ids(stream.prompt), *stream.generated]
            params = stream.params or SamplingParams()
            if params.max_tokens is not None:
                params = replace(params, max_tokens=params.max_tokens - len(stream.generated))
            stream.resumed_from = len(stream.generated)
            stream.decode_worker, stream.reserved, stream.prefilling = None, None, False
            with self._lock:
                stream.worker = self._pick_worker("prefill" if self.parallel.is_disaggregated else "colocated",
                                                  stream.session)
                if not self.parallel.is_disaggregated:
                    self._outbox.put((stream.worker, ("add", request_id, prompt, params)))
            if self.parallel.is_disaggregated:
                await self._start_handoff(stream, request_id, prompt, params)
        except Exception as error:  # the stream's reader is waiting: it gets the reason
            with self._lock:
                self._streams.pop(request_id, None)
            stream.outputs.put_nowait(error)

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
            self._last_heard = [time.monotonic()] * len(self.roles)
            with self._lock:
                self.error = None
                self.events["worker_restarted"] += 1
            return True
        return False

    def _drain_outbox(self) -> None:
        while not self._outbox.empty():  # what was meant for the lost world
            self._outbox.get_nowait()

    def _end_streams(self, error: EngineError) -> None:
        with self._lock:
            streams, self._streams = self._streams, {}
            self._drain_outbox()
            if isinstance(error, WorkerLostError):
                self.events["request_lost"] += len(streams)
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

