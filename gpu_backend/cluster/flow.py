"""How a ``ShardedEngine`` hands a request to its instances: a submission flow.

A flow routes each submission (a request, or the same request submitted again after a loss) to
its instances and speaks to their drivers; the engine keeps the streams, the world and recovery.
``ColocatedFlow`` is the cluster's own: the least loaded instance computes the prompt and
generates the rest. ``disagg.flow`` has prefill then decode instances. The one place that builds
an engine picks its flow (``disagg.flow.sharded_engine``).

The engine calls a flow's methods under its lock unless they say otherwise; a flow reaches the
engine through ``bind``'s engine: ``lock``, ``current``, ``pick``, ``send``, ``forget``,
``streams``, ``world`` (its health), ``roles``, ``recovery`` and ``events``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..engine.outputs import EngineOutput
from ..engine.sampling_params import SamplingParams
from .protocol import AbortRequest, AddRequest
from .roles import RankRoles
from .streams import Stream

if TYPE_CHECKING:
    from .sharded_engine import ShardedEngine


class Flow(Protocol):
    rank_roles: RankRoles | None  # what each rank of the world adds, if anything
    generating_role: str  # the role of the instances that generate (they bound ``max_num_seqs``)

    def bind(self, engine: ShardedEngine) -> None:
        """The engine whose instances the flow hands requests to (once, before any request)."""
        ...

    async def submit(self, stream: Stream, attempt: int, prompt: list[int] | str, params: SamplingParams) -> None:
        """Route the submission and hand it to its instances (in the stream's loop, without the lock);
        nothing once ``engine.current(stream, attempt)`` says it is no longer wanted."""
        ...

    def abort(self, stream: Stream) -> None:
        """The client left a routed request: free what it holds on its instances, forget it once
        nothing more is to come."""
        ...

    def hand_on(self, stream: Stream, output: EngineOutput) -> EngineOutput:
        """``stream.instance``'s last output, the request going on to ``stream.next_instance``: what
        the client gets of it."""
        ...

    def rejected(self, stream: Stream, instance: int, error: Exception) -> None:
        """``instance`` refused the submission (it is forgotten already)."""
        ...

    def receive(self, message: object, instance: int) -> bool:
        """A message of the flow's own protocol from ``instance``'s driver, on the monitor thread
        (without the lock); whether it was one."""
        ...

    def can_serve(self, live_instances: list[int]) -> bool:
        """Whether these instances can still serve a request; if not, the world is lost."""
        ...

    def restarted(self) -> None:
        """The world was started again."""
        ...


class ColocatedFlow:
    """Each request goes to one instance, which computes its prompt and generates the rest."""

    rank_roles = None
    generating_role = "colocated"

    def bind(self, engine: ShardedEngine) -> None:
        if set(engine.roles) != {"colocated"}:
            raise ValueError("prefill and decode instances take the disaggregated flow (gpu_backend.disagg.flow)")
        self.engine = engine

    async def submit(self, stream: Stream, attempt: int, prompt: list[int] | str, params: SamplingParams) -> None:
        engine = self.engine
        with engine.lock:
            if not engine.current(stream, attempt):
                return
            stream.instance = engine.pick("colocated", stream, prompt)
            engine.requests_per_instance[stream.instance] += 1
            engine.send(stream.instance, AddRequest(stream.wire_id, prompt, params, stream.resumed_from))

    def abort(self, stream: Stream) -> None:
        self.engine.send(stream.instance, AbortRequest(stream.wire_id))
        self.engine.forget(stream)

    def hand_on(self, stream: Stream, output: EngineOutput) -> EngineOutput:
        raise AssertionError("a colocated request never goes on to another instance")

    def rejected(self, stream: Stream, instance: int, error: Exception) -> None:
        pass

    def receive(self, message: object, instance: int) -> bool:
        return False

    def can_serve(self, live_instances: list[int]) -> bool:
        return bool(live_instances)

    def restarted(self) -> None:
        pass
