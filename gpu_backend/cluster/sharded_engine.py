"""``ShardedEngine``: TP×PP instances seen from the service process, through the engine contract
(``engine/contract.py``) as an ``AsyncLLM`` is: token ids in, ``EngineOutput``s out.

The world (``world.World``) holds the instances of ``ClusterConfig.instances``. A request's
submission flow (``flow``) routes it to its instances and speaks to their drivers: colocated
(``flow.ColocatedFlow``: the least loaded instance computes the prompt and generates the rest), or
prefill then decode (``disagg.flow``). Each instance's outputs come back to the request's async
iterator; leaving the iterator early aborts it on its instances.

A monitor thread reads the drivers' messages and watches the ranks (``health``). What a lost
instance or a lost world means for the requests (an error, or computed again on the instances left)
is ``recovery``'s.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncGenerator, Sequence

from ..config import EngineConfig
from ..engine.contract import EngineHealth
from ..engine.outputs import EngineOutput
from ..engine.sampling_params import SamplingParams
from ..engine.thread_bridge import post, settle, until_finished
from ..errors import EngineError, InvalidRequestError
from ..tokenizer import Tokenizer
from .config import ClusterConfig
from .flow import ColocatedFlow, Flow
from .health import POLL_S
from .launch import RankProcesses
from .protocol import Accepted, Rejected, StepDone, Stop
from .recovery import InstanceRecovery
from .router import Router
from .streams import Stream, StreamTable
from .world import World

log = logging.getLogger(__name__)


class ShardedEngine:
    def __init__(self, config: EngineConfig, cluster: ClusterConfig, *, flow: Flow | None = None,
                 ready_timeout_s: float = 900.0, attached: RankProcesses | None = None) -> None:
        """``flow``: how requests reach the instances (colocated by default); ``attached``: a driver
        started by someone else (torchrun), never restarted from here (else up to
        ``cluster.instance_restarts`` times)."""
        self.config, self.cluster = config, cluster
        self.flow: Flow = flow if flow is not None else ColocatedFlow()
        self.tokenizer = None if config.skip_tokenizer_init else Tokenizer.from_pretrained(config.model)
        self.roles = [spec.role for spec in cluster.instances]
        self.router = Router(self.roles, config.block_size)
        self.requests_per_instance = [0] * len(self.roles)  # routed so far
        self.error: str | None = None  # why the world is down; None while it serves
        self.restarts = 0
        self.failed_for_good = False  # lost with every restart used up: down until the backend restarts
        # instance_lost, instance_restarted, request_lost, request_recomputed, transfer_failed
        self.events: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.streams = StreamTable()
        self.flow.bind(self)
        self.world = World(config, cluster, self.flow.rank_roles, ready_timeout_s, attached)
        self.recovery = InstanceRecovery(self, 0 if attached is not None else cluster.instance_restarts)
        self._stopped = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="edgewise-instance-monitor", daemon=True)
        self._monitor.start()

    @property
    def max_model_len(self) -> int:
        return self.world.info.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self.world.info.max_num_seqs * self.roles.count(self.flow.generating_role)

    @property
    def lost_instances(self) -> dict[int, str]:
        """Instances of the running world that were lost (and why); the others serve on."""
        return dict(self.world.health.lost)

    # -- requests ------------------------------------------------------------------------------

    async def generate(self, prompt: str | list[int], params: SamplingParams | None, request_id: str,
                       session: str | None = None) -> AsyncGenerator[EngineOutput, None]:
        """``session``: requests naming the same one go to the same instances (their prefix caches)."""
        loop = asyncio.get_running_loop()
        params = params or SamplingParams()
        prompt = self._token_ids(prompt)  # the router weighs load in tokens
        with self.lock:
            if self.error is not None:
                raise self.recovery.unavailable()
            if self.streams.get(request_id) is not None:
                raise InvalidRequestError(f"request id {request_id!r} is already running")
            stream = Stream(request_id, loop, asyncio.Queue(), loop.create_future(), -1, prompt=prompt,
                            params=params, prompt_len=len(prompt), session=session)
            self.streams.add(stream)
        stream.submission = asyncio.ensure_future(self.submit(stream, prompt, params))
        finished = False
        try:
            await stream.accepted
            async for output in until_finished(stream.outputs):
                finished = output.finished
                yield output
        finally:
            if not finished:
                self._abort(stream)

    def _token_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        if self.tokenizer is None:
            raise InvalidRequestError("this model was loaded without a tokenizer; send token ids")
        return self.tokenizer.encode(prompt)

    async def submit(self, stream: Stream, prompt: list[int], params: SamplingParams) -> None:
        """Hand the request to its instances through the flow (again, after a lost instance or transfer)."""
        attempt = stream.attempt
        try:
            await self.flow.submit(stream, attempt, prompt, params)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the stream's reader waits: it gets the reason
            with self.lock:
                if stream.attempt != attempt:
                    return
                self.forget(stream)
            settle(stream.accepted, error)
            stream.outputs.put_nowait(error)

    def _abort(self, stream: Stream) -> None:
        """The client left: free what the request holds on every instance."""
        if stream.submission is not None:
            stream.submission.cancel()
        with self.lock:
            if not self.streams.holds(stream):
                return
            if self.error is not None or stream.instance < 0:
                self.forget(stream)
                return
            self.flow.abort(stream)

    # -- what a flow uses, under the lock ------------------------------------------------------

    def current(self, stream: Stream, attempt: int) -> bool:
        """Whether this submission of the stream is still wanted: not submitted again meanwhile, nor
        its client gone; raises while the world is down."""
        if self.error is not None:
            raise self.recovery.unavailable()
        return stream.attempt == attempt and self.streams.holds(stream)

    def pick(self, role: str, stream: Stream, prompt: list[int] | str, avoid: Sequence[int] = ()) -> int:
        """The instance in ``role`` for the stream, among those serving and not in ``avoid``."""
        unavailable = set(self.world.health.lost) | set(avoid)
        prompt_ids = prompt if isinstance(prompt, list) else None  # text without a tokenizer: no prefix index
        return self.router.pick(role, self.streams.all(), self.world.loads, stream.session, unavailable, prompt_ids)

    def send(self, instance: int, message: object) -> None:
        self.world.send(instance, message)

    def forget(self, stream: Stream) -> None:
        self.streams.forget(stream)

    # -- status and shutdown -------------------------------------------------------------------

    def rank_pids(self, instance: int | None = None) -> list[int]:
        """Process ids of the running ranks, by rank, of one instance or all (none when torchrun started them)."""
        return self.world.rank_pids(instance)

    def instance_of(self, request_id: str) -> int | None:
        """The instance whose outputs a running request streams now (None: not routed, or not running)."""
        stream = self.streams.get(request_id)
        return None if stream is None or stream.instance < 0 else stream.instance

    def stats(self) -> dict[str, int]:
        """Summed over the instances."""
        return {name: sum(getattr(load, name) for load in self.world.loads) for name in
                ("num_running", "num_waiting", "kv_blocks_free", "kv_blocks_used", "num_preemptions")}

    def health(self) -> EngineHealth:
        with self.lock:
            return EngineHealth(self.error, self.failed_for_good, self.lost_instances, dict(self.events))

    def shutdown(self) -> None:
        """Stop the ranks; requests still running end with an EngineError."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for instance in self.world.health.live_instances:
            self.send(instance, Stop())
        self.world.outbox.close()
        self._monitor.join(timeout=POLL_S * 10)
        self.world.ranks.stop()
        self.recovery.end_streams(EngineError("the engine was shut down"))

    @property
    def stopped(self) -> bool:
        """Shut down: no restart is tried any more."""
        return self._stopped.is_set()

    # -- the monitor thread: messages, losses, restarts ------------------------------------------

    def _watch(self) -> None:
        while not self._stopped.is_set():
            for instance, reason in self.world.poll(self._dispatch):
                if not self._stopped.is_set() and instance not in self.world.health.lost:
                    self.recovery.lose_instance(instance, reason)
            reason = self.recovery.take_world_lost()
            if reason is not None and not self._stopped.is_set() and not self.recovery.recover_world(reason):
                return

    def _dispatch(self, message: object, instance: int) -> None:
        match message:
            case StepDone(outputs):
                for output in outputs:
                    self._deliver(output, instance)
            case Accepted(request_id):
                self._accepted(request_id, None, instance)
            case Rejected(request_id, error):
                self._accepted(request_id, error, instance)
            case _ if not self.flow.receive(message, instance):
                log.warning("instance %d sent a message no one takes: %r", instance, message)

    def _accepted(self, wire_id: str, error: Exception | None, instance: int) -> None:
        """The instance took the request, or refused it (``error``): its reader learns which."""
        with self.lock:
            stream = self.streams.by_wire(wire_id)
            if stream is not None and error is not None:
                self.forget(stream)
                self.flow.rejected(stream, instance, error)
        if stream is not None:
            post(stream.loop, settle, stream.accepted, error)
            if error is not None:  # reaches a request submitted again too
                post(stream.loop, stream.outputs.put_nowait, error)

    def _deliver(self, output: EngineOutput, instance: int) -> None:
        with self.lock:
            stream = self.streams.by_wire(output.request_id)
            if stream is None or instance != stream.instance:
                return
            if output.finished and stream.next_instance not in (None, instance):
                output = self.flow.hand_on(stream, output)
            if output.finished:
                self.forget(stream)
            output = stream.as_first_submitted(output)
        if not stream.abandoned:
            post(stream.loop, stream.outputs.put_nowait, output)
