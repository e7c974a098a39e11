"""What a sharded engine does when workers are lost or a KV transfer fails (``ShardedEngine``'s half).

A lost worker is killed alone; its requests end with ``WorkerLostError``, or with
``on_worker_loss="recompute"`` are submitted again under a new id (prompt and the tokens streamed
so far) to the workers left, and stream on without a gap; new requests avoid it. A failed KV
transfer ends or recomputes its request the same way, and its (prefill, decode) pair is not used
again. When no worker (or no working pair) is left, the world is lost: every rank is killed and
the world starts again, up to ``max_restarts`` times, and its requests end or are recomputed.
Once every restart is used up the model has failed for good: ``WorkerFailedError`` says so, and
that only restarting the backend brings it back.

Every method runs under the engine's lock unless it says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

from ..config import EngineConfig, ParallelConfig
from ..disagg.kv_transfer import KVTransferError
from .router import Router
from ..engine.sampling_params import SamplingParams
from ..engine.thread_bridge import post, settle
from ..errors import EngineError, WorkerFailedError, WorkerLostError
from .driver import WorkerInfo, WorkerLoad
from .health import WorkerHealth
from .launch import RankProcesses
from .streams import Stream

if TYPE_CHECKING:
    from .outbox import Outbox

log = logging.getLogger(__name__)
NO_LOAD = WorkerLoad(0, 0, 0, 0, 0)


class WorkerRecovery:
    """Mixed into ``ShardedEngine``, whose state (below) it shares, and whose ``_start``, ``_submit``,
    ``_forget`` and ``_token_ids`` it calls."""

    config: EngineConfig
    parallel: ParallelConfig
    max_restarts: int
    restarts: int
    error: str | None
    failed_for_good: bool
    events: Counter[str]
    health: WorkerHealth
    info: WorkerInfo
    roles: list[str]
    router: Router
    _ranks: RankProcesses
    _streams: dict[str, Stream]
    _by_wire: dict[str, Stream]
    _broken_pairs: set[tuple[int, int]]
    _loads: list[WorkerLoad]
    _lock: threading.Lock
    _stopped: threading.Event
    _world_lost: str | None
    _outbox: Outbox

    def _transfer_failed(self, wire_id: str, why: str, decode_worker: int) -> None:
        """A decode worker's KV did not arrive (it freed the blocks): the pair is not used again, and
        the request ends with the reason or is computed again, as ``on_worker_loss`` says."""
        log.error("KV transfer of %s to decode worker %d failed: %s", wire_id, decode_worker, why)
        with self._lock:
            self.events["transfer_failed"] += 1
            stream = self._by_wire.get(wire_id)
            if stream is None or stream.prefill_worker is None:
                return
            self._broken_pairs.add((stream.prefill_worker, decode_worker))
            if not self._can_serve():  # the world restarts, and its requests with it
                self._world_lost = f"no working prefill-decode pair is left (the last transfer failed: {why})"
                return
            self._reroute(stream, KVTransferError(f"the prompt's KV did not reach decode worker {decode_worker}: "
                                                  f"{why}"))

    def _lose_worker(self, worker: int, reason: str) -> None:
        """Kill one worker; its requests end or are computed again on the others. With none left to
        serve, the world is lost."""
        log.error("worker %d of %s lost: %s", worker, self.config.model, reason)
        with self._lock:
            self.health.lost[worker] = reason
            self.events["worker_lost"] += 1
            self._loads[worker] = NO_LOAD
            if not self._can_serve():
                self._world_lost = reason
                return
        self._ranks.kill_worker(worker)
        with self._lock:
            for stream in [s for s in self._streams.values() if worker in (s.worker, s.decode_worker)]:
                self._reroute(stream, WorkerLostError(f"worker {worker} was lost: {reason}"))

    def _can_serve(self) -> bool:
        live = self.health.live_workers
        if not self.parallel.is_disaggregated:
            return bool(live)
        return any((p, d) not in self._broken_pairs for p in live if self.roles[p] == "prefill"
                   for d in live if self.roles[d] == "decode")

    def _reroute(self, stream: Stream, error: EngineError) -> None:
        """Free what the request holds on the workers still up; then end it or submit it again."""
        live = set(self.health.live_workers)
        holders = {stream.worker, stream.decode_worker} if stream.worker >= 0 else {stream.decode_worker}
        for worker in holders & live:
            self._outbox.put(worker, ("abort", stream.wire_id))
        if stream.abandoned or self.parallel.on_worker_loss != "recompute":
            self._forget(stream)
            post(stream.loop, cancel_submission, stream)
            if not stream.abandoned:
                self.events["request_lost"] += 1
                post(stream.loop, settle, stream.accepted, error)
                post(stream.loop, stream.outputs.put_nowait, error)
            return
        self._recompute(stream)

    def _recompute(self, stream: Stream) -> None:
        """Submit the request again under a new id: its prompt and the tokens the client already has
        are computed anew, and the stream goes on from where it was."""
        self._forget(stream)
        stream.attempt += 1
        stream.worker, stream.prefill_worker, stream.decode_worker = -1, None, None
        stream.reserved, stream.prefilling = None, False
        self._streams[stream.request_id] = self._by_wire[stream.wire_id] = stream
        self.events["request_recomputed"] += 1
        post(stream.loop, self._resubmit, stream)

    def _resubmit(self, stream: Stream) -> None:
        """In the stream's loop: replace the earlier submission."""
        cancel_submission(stream)
        prompt = [*self._token_ids(stream.prompt), *stream.generated]
        params = stream.params or SamplingParams()
        if params.max_tokens is not None:
            params = replace(params, max_tokens=params.max_tokens - len(stream.generated))
        stream.resumed_from = len(stream.generated)
        stream.submission = asyncio.ensure_future(self._submit(stream, prompt, params))

    def _recover_world(self, reason: str) -> bool:
        """Kill the whole world and start it again; False when it could not be."""
        recompute = self.parallel.on_worker_loss == "recompute" and self.restarts < self.max_restarts
        log.error("the world of %s is lost: %s", self.config.model, reason)
        with self._lock:
            self.error = reason
            self._outbox.clear()
            if self.restarts >= self.max_restarts:  # its streams learn that no retry can help
                self._give_up()
        self._ranks.kill()
        if not recompute:
            self._end_streams(self._unavailable())
        restarted = self._restart()
        with self._lock:
            if not restarted and not self._stopped.is_set():
                self._give_up()
            for stream in list(self._streams.values()):
                if stream.abandoned:
                    self._forget(stream)
                elif recompute and restarted:
                    self._recompute(stream)
        if recompute and not restarted:
            self._end_streams(self._unavailable())
        return restarted

    def _give_up(self) -> None:
        """No restart is left: the model stays down until the backend is restarted."""
        if not self.failed_for_good:
            self.failed_for_good = True
            self.error = (f"{self.error}; every restart is used up ({self.restarts} of {self.max_restarts}, "
                          f"--worker-restarts): the model is down until the backend is restarted")
            log.error("%s has failed for good: %s", self.config.model, self.error)

    def _unavailable(self) -> WorkerLostError:
        """What a request gets while the world is down: restarting, or failed for good."""
        error = self.error or "the workers are down"
        return WorkerFailedError(error) if self.failed_for_good else WorkerLostError(error)

    def _restart(self) -> bool:
        while self.restarts < self.max_restarts and not self._stopped.is_set():
            self.restarts += 1
            log.warning("restarting the workers of %s (restart %d of %d)", self.config.model, self.restarts,
                        self.max_restarts)
            try:
                ranks, self.info = self._start()
            except EngineError as error:
                with self._lock:
                    self.error = f"{self.error}; restart {self.restarts} failed: {error}"
                continue
            with self._lock:
                self._ranks, self.health = ranks, WorkerHealth(ranks, self.parallel)
                self._broken_pairs.clear()
                self.router.prefixes.clear()  # the new workers' caches are empty
                self._loads = [NO_LOAD] * len(self.roles)
                self.error = None
                self.events["worker_restarted"] += 1
            return True
        return False

    def _end_streams(self, error: EngineError) -> None:
        with self._lock:
            streams, self._streams, self._by_wire = self._streams, {}, {}
            self._outbox.clear()
            if isinstance(error, WorkerLostError):
                self.events["request_lost"] += sum(not stream.abandoned for stream in streams.values())
        for stream in streams.values():
            post(stream.loop, cancel_submission, stream)
            post(stream.loop, settle, stream.accepted, error)
            post(stream.loop, stream.outputs.put_nowait, error)


def cancel_submission(stream: Stream) -> None:
    """Stop the stream's submission in its loop (it may be waiting for blocks)."""
    if stream.submission is not None and not stream.submission.done():
        stream.submission.cancel()
