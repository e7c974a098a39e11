"""The edge's queue broker: one per edge (``edge.shared("queues", ...)``), holding every queue's messages
in one SQLite store and delivering each consumed queue's batches to its consumer Worker.

Each consumed queue has one delivery loop, so one batch of a queue is in flight at a time. A batch
goes out when ``max_batch_size`` messages are visible, or when the oldest visible message has waited
``max_batch_timeout`` seconds. It runs as an invocation of the consumer Worker at the edge's primary
PoP (``edge.colos[0]``). Its messages stay in the store until the handler has finished; then the
acknowledged ones are deleted, and the retried ones are made visible again after their delay. A
message past ``max_retries`` moves to the ``dead_letter_queue``, or is dropped with a log line.
Messages of a queue without a consumer wait in the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import to_thread
from typing import TYPE_CHECKING, Any

from .batch import Decision, MessageBatch
from .consumer import ConsumerSettings, consumers_by_queue, run_queue_handler
from .store import (
    Backlog,
    NewMessage,
    QueueStore,
    Readiness,
    StoredMessage,
    database_path,
)

if TYPE_CHECKING:
    from ...edge import Edge

log = logging.getLogger("edgewise.queues")

SHARED_KEY = "queues"
LOOP_ERROR_PAUSE_S = 1.0  # a delivery loop that failed outside the handler (the store) tries again after this
CLOSE_TIMEOUT_S = 5.0


def now_ms() -> int:
    return int(time.time() * 1000)


def queue_broker(edge: Edge) -> QueueBroker:
    """The edge's broker, made on first use and started by ``edge.start()``."""
    return edge.shared(SHARED_KEY, lambda: QueueBroker(edge))


class QueueBroker:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.store = QueueStore(database_path(edge.state.folder("queues")))
        self.consumers: dict[str, ConsumerSettings] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Reads the consumers of every Worker of the edge (a bad table stops the start) and starts
        delivering; messages left from an earlier run, delivered or not, go out first."""
        declared = [(script.name, script.config.file, script.config.queue_consumers)
                    for script in self.edge.scripts.values()]
        self.consumers = consumers_by_queue(declared)
        for consumer in self.consumers.values():
            if consumer.is_pull:
                log.warning("queue %r has an http_pull consumer: edgewise does not serve pull consumers, so its "
                            "messages stay in the queue", consumer.queue)
                continue
            self._wake[consumer.queue] = asyncio.Event()
            self._loops.append(asyncio.create_task(self._deliver_forever(consumer),
                                                   name=f"queue {consumer.queue} delivery"))

    async def aclose(self) -> None:
        """Stops delivering. A batch in flight is cancelled and its messages stay, to go out again next start."""
        for loop in self._loops:
            loop.cancel()
        if self._loops:
            await asyncio.wait(self._loops, timeout=CLOSE_TIMEOUT_S)
        self._loops.clear()
        self.store.close()

    # ---- producing -----------------------------------------------------------------------------------

    async def add(self, queue: str, messages: list[NewMessage]) -> None:
        """Written to the store (all or none) before this returns, then the queue's consumer is woken."""
        await to_thread(self.store.add, queue, messages)
        self._notify(queue)

    async def backlog(self, queue: str) -> Backlog:
        return await to_thread(self.store.backlog, queue)

    def _notify(self, queue: str) -> None:
        wake = self._wake.get(queue)
        if wake is not None:
            wake.set()

    # ---- delivering ----------------------------------------------------------------------------------

    async def _deliver_forever(self, consumer: ConsumerSettings) -> None:
        wake = self._wake[consumer.queue]
        while True:
            try:
                wake.clear()  # before reading the store: a send after the read sets it again
                taken = await to_thread(self._take_if_due, consumer)
                if isinstance(taken, list):
                    if taken:
                        await self._deliver(consumer, MessageBatch(consumer.queue, taken))
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), None if taken is None else taken / 1000)
                except TimeoutError:
                    pass
            except Exception:
                log.exception("queue %r: delivery failed outside the consumer; trying again in %.0f s",
                              consumer.queue, LOOP_ERROR_PAUSE_S)
                await asyncio.sleep(LOOP_ERROR_PAUSE_S)

    def _take_if_due(self, consumer: ConsumerSettings) -> list[StoredMessage] | int | None:
        """On a worker thread: the next batch if one is due, else how long to wait in ms (None: until woken)."""
        now = now_ms()
        wait_ms = _wait_ms(consumer, self.store.readiness(consumer.queue, now, consumer.max_batch_size), now)
        return self.store.take(consumer.queue, now, consumer.max_batch_size) if wait_ms == 0 else wait_ms

    async def _deliver(self, consumer: ConsumerSettings, batch: MessageBatch) -> None:
        handler_failed = not await self._invoke(consumer, batch)
        await self._settle(consumer, batch, batch.outcome(handler_failed))

    async def _invoke(self, consumer: ConsumerSettings, batch: MessageBatch) -> bool:
        """Runs the consumer's handler on the batch; whether it returned (False: it raised)."""
        script = self.edge.script(consumer.script_name)
        colo = self.edge.colos[0]

        def call(worker: Any, env: Any, ctx: Any) -> Any:
            return run_queue_handler(worker, batch, env, ctx)

        try:
            await self.edge.invoke(script, colo, call, event="queue",
                                   detail={"queue": consumer.queue, "batch_size": len(batch.messages)})
        except Exception:
            log.exception("queue %r: the consumer Worker %r raised on a batch of %d at %s; its messages not "
                          "acknowledged are retried", consumer.queue, consumer.script_name, len(batch.messages), colo)
            return False
        return True

    async def _settle(self, consumer: ConsumerSettings, batch: MessageBatch, outcome: dict[str, Decision]) -> None:
        now = now_ms()
        delete: list[str] = []
        delay: list[tuple[str, int]] = []
        move: list[tuple[str, str]] = []
        for message in batch.messages:
            decision = outcome[message.id]
            if decision.ack:
                delete.append(message.id)
            elif message.attempts > consumer.max_retries:
                if consumer.dead_letter_queue is not None:
                    move.append((message.id, consumer.dead_letter_queue))
                else:
                    delete.append(message.id)
                    log.warning("queue %r: message %s dropped after %d attempts (max_retries = %d, no "
                                "dead_letter_queue)", consumer.queue, message.id, message.attempts, consumer.max_retries)
            else:
                delay_s = consumer.retry_delay_s if decision.delay_s is None else decision.delay_s
                delay.append((message.id, now + round(delay_s * 1000)))
        await to_thread(self.store.settle, delete=delete, delay=delay, move=move, now_ms=now)
        if move:
            log.warning("queue %r: %d message(s) moved to the dead-letter queue %r after %d attempts",
                        consumer.queue, len(move), consumer.dead_letter_queue, consumer.max_retries + 1)
            self._notify(str(consumer.dead_letter_queue))


def _wait_ms(consumer: ConsumerSettings, readiness: Readiness, now: int) -> int | None:
    """0: deliver a batch now; else how long to wait for more (None: until a send wakes the loop)."""
    if readiness.ready_count >= consumer.max_batch_size:
        return 0
    if readiness.first_visible_ms is None:
        return None
    if readiness.ready_count == 0:
        return max(1, readiness.first_visible_ms - now)  # the next delayed message
    return max(0, readiness.first_visible_ms + consumer.max_batch_timeout_ms - now)
