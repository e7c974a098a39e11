"""The service's side of a disaggregated cluster: each request goes to a decode instance through a
prefill instance (``cluster.flow.Flow``), and ``sharded_engine`` builds the engine with its flow.

1. Pick the decode instance (unless one token is all that is asked for), then a prefill instance with
   a working link to it (``cluster.router``: load in tokens, prefix-cache hits, sessions).
2. Reserve the prompt's blocks on the decode instance (``Reserve``); while none are free, ask again
   every ``RESERVE_RETRY_S`` up to the instance timeout.
3. Send the prompt to the prefill instance (``Prefill``), which streams the first token and pushes
   the KV as it is computed; relay each chunk it posted to the decode instance, in order
   (``KVChunk``), also for requests no longer tracked, so the pair's messages stay in step.
4. The prefill instance's last output hands the request on (``hand_on``): the decode instance is told
   the first token (``Admit``), lands the KV and decodes the rest; or, if it ended there (a stop
   token, an abort), the reserved blocks are freed.

A transfer that failed (``TransferFailed``) breaks its (prefill, decode) pair for good, since its
message order may be lost; the request is rerouted as ``on_instance_loss`` says, and the world is
lost once no working pair is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

from ..cluster.flow import ColocatedFlow, Flow
from ..cluster.config import ClusterConfig
from ..cluster.launch import RankProcesses
from ..cluster.protocol import AbortRequest
from ..cluster.sharded_engine import ShardedEngine
from ..cluster.streams import Stream, resolve
from ..config import EngineConfig
from ..engine.outputs import EngineOutput
from ..engine.sampling_params import SamplingParams
from ..engine.thread_bridge import post, settle
from ..errors import EngineError
from .handoff import join_handoffs
from .kv_transfer import KVTransferError
from .protocol import Admit, Handoff, KVChunk, KVPushed, Prefill, Reserve, Reserved, TransferFailed

log = logging.getLogger(__name__)
RESERVE_RETRY_S = 0.05


@dataclass
class Handover:
    """A submission's way from its prefill instance to its decode instance (``Stream.flow_state``)."""

    prefill_instance: int
    reserved: asyncio.Future | None = None  # the decode instance's answer to the last ``Reserve``
    prefilling: bool = False  # the prefill instance has the request


class DisaggregatedFlow:
    rank_roles = staticmethod(join_handoffs)
    generating_role = "decode"

    def __init__(self) -> None:
        self.broken_pairs: set[tuple[int, int]] = set()  # (prefill, decode) whose transfer failed
        self.kv_chunks_relayed = 0  # KV chunks sent from prefill to decode instances

    def bind(self, engine: ShardedEngine) -> None:
        if not {"prefill", "decode"} <= set(engine.roles):
            raise ValueError("the disaggregated flow needs prefill and decode instances")
        self.engine = engine

    async def submit(self, stream: Stream, attempt: int, prompt: list[int] | str, params: SamplingParams) -> None:
        assert isinstance(prompt, list)
        engine = self.engine
        with engine.lock:
            if not engine.current(stream, attempt):
                return
            self._route(stream, prompt, params)
        handoff = None
        if stream.next_instance is not None:
            handoff = Handoff(stream.next_instance, len(await self._reserve(stream, attempt, prompt, params)))
        with engine.lock:
            if not engine.current(stream, attempt):
                return
            engine.send(stream.instance, Prefill(stream.wire_id, prompt, params, handoff, stream.resumed_from))
            stream.flow_state.prefilling = True

    def _route(self, stream: Stream, prompt: list[int], params: SamplingParams) -> None:
        """A decode instance (unless one token is all that is asked for), then a prefill instance with a
        working link to it."""
        engine = self.engine
        live = engine.world.health.live_instances
        prefill = [w for w in live if engine.roles[w] == "prefill"]
        avoid: set[int] = set()
        if params.max_tokens is None or params.max_tokens > 1:
            decode = [w for w in live if engine.roles[w] == "decode"]
            unlinked = {d for d in decode if all((p, d) in self.broken_pairs for p in prefill)}
            stream.next_instance = engine.pick("decode", stream, prompt, unlinked)
            avoid = {p for p in prefill if (p, stream.next_instance) in self.broken_pairs}
        stream.instance = engine.pick("prefill", stream, prompt, avoid)
        engine.requests_per_instance[stream.instance] += 1
        stream.flow_state = Handover(stream.instance)

    async def _reserve(self, stream: Stream, attempt: int, prompt: list[int], params: SamplingParams) -> list[int]:
        """Blocks on the decode instance; while none are free, ask again, up to the instance timeout."""
        engine = self.engine
        deadline = time.monotonic() + engine.cluster.instance_timeout_s
        while True:
            reserved = stream.loop.create_future()
            with engine.lock:
                if stream.attempt != attempt:
                    raise asyncio.CancelledError
                stream.flow_state.reserved = reserved
                engine.send(stream.next_instance, Reserve(stream.wire_id, prompt, params, stream.resumed_from))
            blocks = await reserved
            if blocks is not None:
                return blocks
            if time.monotonic() > deadline:
                raise EngineError(f"no KV blocks came free on decode instance {stream.next_instance} within "
                                  f"{engine.cluster.instance_timeout_s:g} s")
            await asyncio.sleep(RESERVE_RETRY_S)

    def abort(self, stream: Stream) -> None:
        engine, decode = self.engine, stream.next_instance
        if decode is not None and not stream.flow_state.prefilling:  # left while blocks were reserved
            engine.send(decode, AbortRequest(stream.wire_id))
            engine.forget(stream)
            return
        engine.send(stream.instance, AbortRequest(stream.wire_id))
        if decode is None or stream.instance == decode:
            engine.forget(stream)
        else:  # still prefilling: what becomes of the decode instance's blocks depends on how prefill ends
            stream.abandoned = True

    def hand_on(self, stream: Stream, output: EngineOutput) -> EngineOutput:
        """The prefill instance's last word on a request: its first token goes to the decode instance,
        which takes over (its KV is on the way), or the request ended there and its blocks are freed."""
        engine, decode = self.engine, stream.next_instance
        assert decode is not None
        if output.finish_reason != "length":  # a stop token, or aborted: nothing to decode
            engine.send(decode, AbortRequest(output.request_id))
            return output
        engine.send(decode, Admit(output.request_id, output.new_token_ids[-1]))
        stream.instance, stream.flow_state.prefilling = decode, False
        if stream.abandoned:  # take the KV the prefill instance is sending, then let it go
            engine.send(decode, AbortRequest(output.request_id))
            return replace(output, finish_reason="abort")
        return replace(output, finish_reason=None)

    def rejected(self, stream: Stream, instance: int, error: Exception) -> None:
        if stream.next_instance not in (None, instance):  # the prefill instance refused: free the blocks
            self.engine.send(stream.next_instance, AbortRequest(stream.wire_id))
        handover = stream.flow_state
        if handover is not None and handover.reserved is not None:
            post(stream.loop, settle, handover.reserved, error)

    def receive(self, message: object, instance: int) -> bool:
        match message:
            case KVPushed(chunks):
                self._relay(chunks)
            case Reserved(request_id, blocks):
                with self.engine.lock:
                    stream = self.engine.streams.by_wire(request_id)
                handover = stream.flow_state if stream is not None else None
                if handover is not None and handover.reserved is not None:
                    post(stream.loop, resolve, handover.reserved, blocks)
            case TransferFailed(request_id, why):
                self._transfer_failed(request_id, why, instance)
            case _:
                return False
        return True

    def _relay(self, chunks: list[KVChunk]) -> None:
        """Tell each decode instance of the KV chunks on their way to it, in the order they were posted
        (for requests no longer tracked here too: the pair's messages must stay in step)."""
        engine = self.engine
        with engine.lock:
            for chunk in chunks:
                if chunk.decode_instance not in engine.world.health.lost:
                    engine.send(chunk.decode_instance, chunk)
                    self.kv_chunks_relayed += 1

    def _transfer_failed(self, wire_id: str, why: str, decode_instance: int) -> None:
        """A decode instance's KV did not arrive (it freed the blocks): the pair is not used again, and
        the request ends with the reason or is computed again, as ``on_instance_loss`` says."""
        log.error("KV transfer of %s to decode instance %d failed: %s", wire_id, decode_instance, why)
        engine = self.engine
        with engine.lock:
            engine.events["transfer_failed"] += 1
            stream = engine.streams.by_wire(wire_id)
            if stream is None or stream.flow_state is None:
                return
            self.broken_pairs.add((stream.flow_state.prefill_instance, decode_instance))
            if not self.can_serve(engine.world.health.live_instances):  # the world restarts, its requests with it
                engine.recovery.lose_world(f"no working prefill-decode pair is left (the last transfer failed: {why})")
                return
            engine.recovery.reroute(stream, KVTransferError(f"the prompt's KV did not reach decode instance "
                                                            f"{decode_instance}: {why}"))

    def can_serve(self, live_instances: list[int]) -> bool:
        roles = self.engine.roles
        return any((p, d) not in self.broken_pairs for p in live_instances if roles[p] == "prefill"
                   for d in live_instances if roles[d] == "decode")

    def restarted(self) -> None:
        self.broken_pairs.clear()


def sharded_engine(config: EngineConfig, cluster: ClusterConfig, *, ready_timeout_s: float = 900.0,
                   attached: RankProcesses | None = None) -> ShardedEngine:
    """The engine for ``cluster``'s instances, with the flow their roles take: prefill then decode
    instances, or colocated ones."""
    flow: Flow = DisaggregatedFlow() if cluster.is_disaggregated else ColocatedFlow()
    return ShardedEngine(config, cluster, flow=flow, ready_timeout_s=ready_timeout_s, attached=attached)
