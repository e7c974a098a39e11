"""``ShardedEngine``: TP×PP workers seen from the service process, used as an ``AsyncLLM`` is.

The world holds the workers of ``ParallelConfig.worker_specs``: colocated replicas, or prefill
and decode workers. A request goes to the least loaded worker's driver (its first rank) over
that worker's pipe; its outputs come back to the request's async iterator, and leaving the
iterator early aborts it on the worker. Disaggregated, the least loaded decode worker first
reserves the prompt's blocks, the least loaded prefill worker computes the prompt and the first
token (streamed at once) and pushes the KV into those blocks, and the decode worker, told the
first token, receives the KV and decodes the rest.

A monitor thread reads the drivers' messages and watches the ranks (``health``). A lost worker
is killed alone; the others keep serving, and new requests avoid it. Its requests end with
``WorkerLostError``, or with ``on_worker_loss="recompute"`` are submitted again (prompt and the
tokens streamed so far) to the workers left and stream on without a gap. A KV transfer that
fails is handled the same way, and its pair of workers is not used again. Only when no worker
(or no working prefill/decode pair) is left is the world lost: every rank is killed, ``error``
says why (``/healthz`` reports it), and the world starts again, up to ``max_restarts`` times,
while the service keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from multiprocessing.connection import wait

from ..config import EngineConfig, ParallelConfig
from .router import Router
from ..engine.sampling_params import SamplingParams
from ..engine.thread_bridge import post, settle
from ..errors import EngineError, InvalidRequestError
from ..tokenizer import Tokenizer
from .driver import WorkerInfo, WorkerOutput
from .health import POLL_S, WorkerHealth
from .launch import RankProcesses, spawn_world
from .outbox import Outbox
from .recovery import NO_LOAD, WorkerRecovery
from .streams import Stream, resolve

log = logging.getLogger(__name__)
RESERVE_RETRY_S = 0.05


class ShardedEngine(WorkerRecovery):
    def __init__(self, config: EngineConfig, parallel: ParallelConfig, *, max_restarts: int = 3,
                 ready_timeout_s: float = 900.0, attached: RankProcesses | None = None) -> None:
        """``attached``: a driver started by someone else (torchrun); it is never restarted from here."""
        self.config, self.parallel = config, parallel
        self.max_restarts = 0 if attached is not None else max_restarts
        self.ready_timeout_s = ready_timeout_s
        self.tokenizer = None if config.skip_tokenizer_init else Tokenizer.from_pretrained(config.model)
        self.error: str | None = None
        self.restarts = 0
        self.failed_for_good = False  # lost with every restart used up: down until the backend restarts
        # worker_lost, worker_restarted, request_lost, request_recomputed, transfer_failed
        self.events: Counter[str] = Counter()
        self._streams: dict[str, Stream] = {}  # by the client's request id
        self._by_wire: dict[str, Stream] = {}  # by the id its current submission has on the workers
        self._broken_pairs: set[tuple[int, int]] = set()  # (prefill, decode) whose transfer failed
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._world_lost: str | None = None  # set under the lock when no pair of workers is left
        self._ranks, self.info = self._start(attached)
        self.health = WorkerHealth(self._ranks, parallel)
        self.roles = [spec.role for spec in parallel.worker_specs()]
        self.router = Router(self.roles, config.block_size)
        self._loads = [NO_LOAD] * len(self.roles)
        self.requests_per_worker = [0] * len(self.roles)  # routed so far
        self.kv_chunks_relayed = 0  # KV chunks sent from prefill to decode workers
        self._outbox = Outbox(len(self.roles), lambda: self._ranks.connections)
        self._monitor = threading.Thread(target=self._watch, name="edgewise-worker-monitor", daemon=True)
        self._monitor.start()

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self.info.max_num_seqs * sum(role != "prefill" for role in self.roles)

    @property
    def lost_workers(self) -> dict[int, str]:
        """Workers of the running world that were lost (and why); the others serve on."""
        return dict(self.health.lost)

    # -- requests ------------------------------------------------------------------------------

    async def generate(self, prompt: str | list[int], params: SamplingParams | None, request_id: str,
                       session: str | None = None) -> AsyncIterator[WorkerOutput]:
        """``session``: requests naming the same one go to the same workers (their prefix caches)."""
        loop = asyncio.get_running_loop()
        if self.parallel.is_disaggregated:
            params = params or SamplingParams()
        if self.parallel.is_disaggregated or self.tokenizer is not None:  # the router weighs load in tokens
            prompt = self._token_ids(prompt)
        with self._lock:
            if self.error is not None:
                raise self._unavailable()
            if request_id in self._streams:
                raise InvalidRequestError(f"request id {request_id!r} is already running")
            stream = Stream(request_id, loop, asyncio.Queue(), loop.create_future(), -1, prompt=prompt,
                            params=params, prompt_len=len(prompt), session=session)
            self._streams[request_id] = self._by_wire[stream.wire_id] = stream
        stream.submission = asyncio.ensure_future(self._submit(stream, prompt, params))
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
                self._abort(stream)

    def _token_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        if self.tokenizer is None:
            raise InvalidRequestError("this model was loaded without a tokenizer; send token ids")
        return self.tokenizer.encode(prompt)

    async def _submit(self, stream: Stream, prompt: str | list[int], params: SamplingParams | None) -> None:
        """Route the request and hand it to its workers (again, after a lost worker or transfer)."""
        attempt = stream.attempt
        try:
            with self._lock:
                if self.error is not None:
                    raise self._unavailable()
                if stream.attempt != attempt or self._streams.get(stream.request_id) is not stream:
                    return  # submitted again meanwhile, or its client left before this ran (a resubmission)
                self._route(stream, prompt, params)
                self.requests_per_worker[stream.worker] += 1
                if not self.parallel.is_disaggregated:
                    self._outbox.put(stream.worker, ("add", stream.wire_id, prompt, params))
            if self.parallel.is_disaggregated:
                await self._start_handoff(stream, attempt, prompt, params)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the stream's reader waits: it gets the reason
            with self._lock:
                if stream.attempt != attempt:
                    return
                self._forget(stream)
            settle(stream.accepted, error)
            stream.outputs.put_nowait(error)

    def _route(self, stream: Stream, prompt: str | list[int], params: SamplingParams | None) -> None:
        """Pick the request's workers among those serving: colocated, or a decode worker (unless one
        token is all that is asked for) and then a prefill worker with a working link to it."""
        lost, requests = set(self.health.lost), list(self._streams.values())
        prompt = prompt if isinstance(prompt, list) else None  # text without a tokenizer: no prefix index

        def pick(role: str, unavailable: set[int]) -> int:
            return self.router.pick(role, requests, self._loads, stream.session, unavailable, prompt)

        if not self.parallel.is_disaggregated:
            stream.worker = pick("colocated", lost)
            return
        prefill = [w for w in self.health.live_workers if self.roles[w] == "prefill"]
        if params is None or params.max_tokens is None or params.max_tokens > 1:
            decode = [w for w in self.health.live_workers if self.roles[w] == "decode"]
            unlinked = {d for d in decode if all((p, d) in self._broken_pairs for p in prefill)}
            stream.decode_worker = pick("decode", lost | unlinked)
            lost |= {p for p in prefill if (p, stream.decode_worker) in self._broken_pairs}
        stream.worker = stream.prefill_worker = pick("prefill", lost)

    async def _start_handoff(self, stream: Stream, attempt: int, prompt: list[int], params: SamplingParams) -> None:
        """Reserve the decode worker's blocks (when there is one), then send the prompt to prefill."""
        handoff = None
        if stream.decode_worker is not None:
            handoff = (stream.decode_worker, len(await self._reserve(stream, attempt, prompt, params)))
        with self._lock:
            if self.error is not None:
                raise self._unavailable()
            if stream.attempt != attempt:
                return
            self._outbox.put(stream.worker, ("prefill", stream.wire_id, prompt, params, handoff))
            stream.prefilling = True

    async def _reserve(self, stream: Stream, attempt: int, prompt: list[int], params: SamplingParams) -> list[int]:
        """Blocks on the decode worker; while none are free, ask again, up to the worker timeout."""
        deadline = time.monotonic() + self.parallel.timeout_s
        while True:
            reserved = stream.loop.create_future()
            with self._lock:
                if stream.attempt != attempt:
                    raise asyncio.CancelledError
                stream.reserved = reserved
                self._outbox.put(stream.decode_worker, ("reserve", stream.wire_id, prompt, params))
            blocks = await reserved
            if blocks is not None:
                return blocks
            if time.monotonic() > deadline:
                raise EngineError(f"no KV blocks came free on decode worker {stream.decode_worker} within "
                                  f"{self.parallel.timeout_s:g} s")
            await asyncio.sleep(RESERVE_RETRY_S)

    def _abort(self, stream: Stream) -> None:
        """The client left: free what the request holds on every worker."""
        if stream.submission is not None:
            stream.submission.cancel()
        with self._lock:
            if self._streams.get(stream.request_id) is not stream:
                return
            if self.error is not None or stream.worker < 0:
                self._forget(stream)
                return
            if stream.decode_worker is not None and not stream.prefilling:  # left while blocks were reserved
                self._outbox.put(stream.decode_worker, ("abort", stream.wire_id))
                self._forget(stream)
                return
            self._outbox.put(stream.worker, ("abort", stream.wire_id))
            if stream.decode_worker is None or stream.worker == stream.decode_worker:
                self._forget(stream)
            else:  # still prefilling: what becomes of the decode worker's blocks depends on how prefill ends
                stream.abandoned = True

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.request_id) is stream:
            del self._streams[stream.request_id]
        if self._by_wire.get(stream.wire_id) is stream:
            del self._by_wire[stream.wire_id]

    def rank_pids(self, worker: int | None = None) -> list[int]:
        """Process ids of the running ranks, by rank, of one worker or all (none when torchrun started them)."""
        ranks = range(len(self._ranks.processes)) if worker is None else self._ranks.worker_ranks[worker]
        return [pid for rank in ranks if (pid := self._ranks.processes[rank].pid) is not None]

    def worker_of(self, request_id: str) -> int | None:
        """The worker whose outputs a running request streams now (None: not routed, or not running)."""
        stream = self._streams.get(request_id)
        return None if stream is None or stream.worker < 0 else stream.worker

    def stats(self) -> dict[str, int]:
        """Summed over the workers."""
        return {name: sum(getattr(load, name) for load in self._loads) for name in
                ("num_running", "num_waiting", "kv_blocks_free", "kv_blocks_used", "num_preemptions")}

    def shutdown(self) -> None:
        """Stop the ranks; requests still running end with an EngineError."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for worker in self.health.live_workers:
            self._outbox.put(worker, ("stop",))
        self._outbox.close()
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

    # -- the monitor thread: messages, losses, restarts ------------------------------------------

    def _watch(self) -> None:
        while not self._stopped.is_set():
            for worker, reason in self._poll():
                if not self._stopped.is_set() and worker not in self.health.lost:
                    self._lose_worker(worker, reason)
            with self._lock:
                reason, self._world_lost = self._world_lost, None
            if reason is not None and not self._stopped.is_set() and not self._recover_world(reason):
                return

    def _poll(self) -> list[tuple[int, str]]:
        """Read what the live drivers sent; (worker, why) of each worker found lost."""
        connections = {self._ranks.connections[worker]: worker for worker in self.health.live_workers}
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
            if message[0] == "error":
                losses[worker] = self.health.root_cause(worker, f"worker {worker} reported an error: {message[1]}")
            else:
                self._dispatch(message, worker)
        if not connections:
            time.sleep(POLL_S)
        return list(losses.items()) + [(w, why) for w, why in self.health.check() if w not in losses]

    def _dispatch(self, message: tuple, worker: int) -> None:
        kind = message[0]
        if kind == "step":
            _, outputs, self._loads[worker], pushed = message
            self._relay_chunks(pushed, worker)
            for output in outputs:
                self._deliver(output, worker)
        elif kind in ("accepted", "rejected"):
            error = message[2] if kind == "rejected" else None
            with self._lock:
                stream = self._by_wire.get(message[1])
                if stream is not None and error is not None:
                    self._forget(stream)
                    if stream.decode_worker not in (None, worker):  # the prefill worker refused: free the blocks
                        self._outbox.put(stream.decode_worker, ("abort", message[1]))
            if stream is not None:
                post(stream.loop, settle, stream.accepted, error)
                if error is not None:  # reaches a request submitted again too
                    post(stream.loop, stream.outputs.put_nowait, error)
                if error is not None and stream.reserved is not None:
                    post(stream.loop, settle, stream.reserved, error)
        elif kind == "reserved":
            with self._lock:
                stream = self._by_wire.get(message[1])
            if stream is not None and stream.reserved is not None:
                post(stream.loop, resolve, stream.reserved, message[2])
        elif kind == "transfer_failed":
            self._transfer_failed(message[1], message[2], worker)

    def _relay_chunks(self, pushed: list[tuple[str, int, int, int]], prefill_worker: int) -> None:
        """Tell each decode worker of the KV chunks on their way to it, in the order they were posted
        (for requests no longer tracked here too: the pair's messages must stay in step)."""
        with self._lock:
            for request_id, decode_worker, first, num_blocks in pushed:
                if decode_worker not in self.health.lost:
                    self._outbox.put(decode_worker, ("kv_chunk", request_id, prefill_worker, first, num_blocks))
                    self.kv_chunks_relayed += 1

    def _deliver(self, output: WorkerOutput, worker: int) -> None:
        with self._lock:
            stream = self._by_wire.get(output.request_id)
            if stream is None or worker != stream.worker:
                return
            if stream.decode_worker is not None and worker != stream.decode_worker and output.finished:
                output = self._end_prefill(stream, output)
            if output.finished:
                self._forget(stream)
            output = stream.as_first_submitted(output)
        if not stream.abandoned:
            post(stream.loop, stream.outputs.put_nowait, output)

    def _end_prefill(self, stream: Stream, output: WorkerOutput) -> WorkerOutput:
        """The prefill worker's last word on a request: its first token goes to the decode worker,
        which takes over (its KV is on the way), or the request ended there and its blocks are freed."""
        decode = stream.decode_worker
        assert decode is not None
        if output.finish_reason != "length":  # a stop token, or aborted: nothing to decode
            self._outbox.put(decode, ("abort", output.request_id))
            return output
        self._outbox.put(decode, ("admit", output.request_id, output.delta_token_ids[-1]))
        stream.worker, stream.prefilling = decode, False
        if stream.abandoned:  # take the KV the prefill worker is sending, then let it go
            self._outbox.put(decode, ("abort", output.request_id))
            return replace(output, finish_reason="abort")
        return replace(output, finished=False, finish_reason=None)
