"""What a ``ShardedEngine``'s requests go through when instances are lost.

A lost instance is killed alone; its requests end with ``InstanceLostError``, or with
``on_instance_loss="recompute"`` are submitted again under a new id (prompt and the tokens streamed
so far) to the instances left, and stream on without a gap; new requests avoid it. A flow may
reroute a request the same way (``disagg``: a failed KV transfer). When the instances left cannot
serve (the flow's ``can_serve``), the world is lost: every rank is killed and the world starts
again, up to ``max_restarts`` times, and its requests end or are recomputed. Once every restart
is used up the model has failed for good: ``InstanceFailedError`` says so, and that only
restarting the backend brings it back.

Every method runs under the engine's lock unless it says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from ..engine.thread_bridge import post, settle
from ..errors import EngineError, InstanceFailedError, InstanceLostError
from .protocol import AbortRequest
from .streams import Stream

if TYPE_CHECKING:
    from .sharded_engine import ShardedEngine

log = logging.getLogger(__name__)


class InstanceRecovery:
    def __init__(self, engine: ShardedEngine, max_restarts: int) -> None:
        self.engine, self.max_restarts = engine, max_restarts
        self._world_lost: str | None = None  # why, once the instances left cannot serve

    def lose_instance(self, instance: int, reason: str) -> None:
        """On the monitor thread: kill one instance; its requests end or are computed again on the
        others. With none left to serve, the world is lost."""
        engine = self.engine
        log.error("instance %d of %s lost: %s", instance, engine.config.model, reason)
        with engine.lock:
            engine.world.lose(instance, reason)
            engine.events["instance_lost"] += 1
            if not engine.flow.can_serve(engine.world.health.live_instances):
                self._world_lost = reason
                return
        engine.world.kill_instance(instance)
        with engine.lock:
            for stream in [s for s in engine.streams.all() if instance in (s.instance, s.next_instance)]:
                self.reroute(stream, InstanceLostError(f"instance {instance} was lost: {reason}"))

    def lose_world(self, reason: str) -> None:
        """The instances left cannot serve: the monitor restarts the world (``recover_world``)."""
        self._world_lost = reason

    def take_world_lost(self) -> str | None:
        """On the monitor thread: why the world was lost since the last call, if it was."""
        with self.engine.lock:
            reason, self._world_lost = self._world_lost, None
        return reason

    def reroute(self, stream: Stream, error: EngineError) -> None:
        """Free what the request holds on the instances still up; then end it or submit it again."""
        engine = self.engine
        live = set(engine.world.health.live_instances)
        holders = {stream.instance, stream.next_instance} if stream.instance >= 0 else {stream.next_instance}
        for instance in holders & live:
            engine.send(instance, AbortRequest(stream.wire_id))
        if stream.abandoned or engine.cluster.on_instance_loss != "recompute":
            engine.forget(stream)
            post(stream.loop, cancel_submission, stream)
            if not stream.abandoned:
                engine.events["request_lost"] += 1
                post(stream.loop, settle, stream.accepted, error)
                post(stream.loop, stream.outputs.put_nowait, error)
            return
        self._recompute(stream)

    def _recompute(self, stream: Stream) -> None:
        """Submit the request again under a new id: its prompt and the tokens the client already has
        are computed anew, and the stream goes on from where it was."""
        engine = self.engine
        engine.forget(stream)
        stream.attempt += 1
        stream.instance, stream.next_instance, stream.flow_state = -1, None, None
        engine.streams.add(stream)
        engine.events["request_recomputed"] += 1
        post(stream.loop, self._resubmit, stream)

    def _resubmit(self, stream: Stream) -> None:
        """In the stream's loop: replace the earlier submission."""
        cancel_submission(stream)
        prompt = [*stream.prompt, *stream.generated]
        params = stream.params
        if params.max_tokens is not None:
            params = replace(params, max_tokens=params.max_tokens - len(stream.generated))
        stream.resumed_from = len(stream.generated)
        stream.submission = asyncio.ensure_future(self.engine.submit(stream, prompt, params))

    def recover_world(self, reason: str) -> bool:
        """On the monitor thread: kill the whole world and start it again; False when it could not be."""
        engine = self.engine
        recompute = engine.cluster.on_instance_loss == "recompute" and engine.restarts < self.max_restarts
        log.error("the world of %s is lost: %s", engine.config.model, reason)
        with engine.lock:
            engine.error = reason
            engine.world.outbox.clear()
            if engine.restarts >= self.max_restarts:  # its streams learn that no retry can help
                self._give_up()
        engine.world.ranks.kill()
        if not recompute:
            self.end_streams(self.unavailable())
        restarted = self._restart()
        with engine.lock:
            if not restarted and not engine.stopped:
                self._give_up()
            for stream in engine.streams.all():
                if stream.abandoned:
                    engine.forget(stream)
                elif recompute and restarted:
                    self._recompute(stream)
        if recompute and not restarted:
            self.end_streams(self.unavailable())
        return restarted

    def _give_up(self) -> None:
        """No restart is left: the model stays down until the backend is restarted."""
        engine = self.engine
        if not engine.failed_for_good:
            engine.failed_for_good = True
            engine.error = (f"{engine.error}; every restart is used up ({engine.restarts} of {self.max_restarts}, "
                            f"--instance-restarts): the model is down until the backend is restarted")
            log.error("%s has failed for good: %s", engine.config.model, engine.error)

    def unavailable(self) -> InstanceLostError:
        """What a request gets while the world is down: restarting, or failed for good."""
        engine = self.engine
        error = engine.error or "the instances are down"
        return InstanceFailedError(error) if engine.failed_for_good else InstanceLostError(error)

    def _restart(self) -> bool:
        """Without the lock: start the world again, up to ``max_restarts`` times in all."""
        engine = self.engine
        while engine.restarts < self.max_restarts and not engine.stopped:
            engine.restarts += 1
            log.warning("restarting the instances of %s (restart %d of %d)", engine.config.model, engine.restarts,
                        self.max_restarts)
            try:
                ranks, info = engine.world.start()
            except EngineError as error:
                with engine.lock:
                    engine.error = f"{engine.error}; restart {engine.restarts} failed: {error}"
                continue
            with engine.lock:
                engine.world.adopt(ranks, info)
                engine.flow.restarted()
                engine.router.prefixes.clear()  # the new instances' caches are empty
                engine.error = None
                engine.events["instance_restarted"] += 1
            return True
        return False

    def end_streams(self, error: EngineError) -> None:
        """Without the lock: every stream ends with ``error``."""
        engine = self.engine
        with engine.lock:
            streams = engine.streams.take_all()
            engine.world.outbox.clear()
            if isinstance(error, InstanceLostError):
                engine.events["request_lost"] += sum(not stream.abandoned for stream in streams)
        for stream in streams:
            post(stream.loop, cancel_submission, stream)
            post(stream.loop, settle, stream.accepted, error)
            post(stream.loop, stream.outputs.put_nowait, error)


def cancel_submission(stream: Stream) -> None:
    """Stop the stream's submission in its loop (it may be waiting for blocks)."""
    if stream.submission is not None and not stream.submission.done():
        stream.submission.cancel()
