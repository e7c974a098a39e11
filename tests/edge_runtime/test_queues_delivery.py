"""Queue consumers: batching by size and timeout, delays, acks and retries (explicit, by a raising
handler, with delays and precedence), max_retries into the dead-letter queue and its own consumer,
the legacy on_queue handler, the tail event, and messages persisted across an Edge restart."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from queues_fixtures import (
    consumer_module,
    queue_tables,
    start_edge,
    wait_until,
    write_queue_project,
)

from edge_runtime.bindings.queues.broker import queue_broker
from edge_runtime.config import load_config
from edge_runtime.edge import Edge

# On queue "jobs" the consumer does what each message's body asks ({"do": "ack" | "retry" | "raise" | ...,
# "n": ...}); it acks every message of other queues. Each delivery is recorded as (queue, n, attempts, time).
CONSUMER = """
    import time
    from workers import WorkerEntrypoint

    DELIVERIES = []
    BATCHES = []

    class Default(WorkerEntrypoint):
        async def queue(self, batch):
            BATCHES.append((batch.queue, [m.body["n"] for m in batch.messages], time.monotonic()))
            failing = False
            for message in batch.messages:
                DELIVERIES.append((batch.queue, message.body["n"], message.attempts, time.monotonic()))
                do = message.body.get("do", "nothing") if batch.queue == "jobs" else "ack"
                if do == "ack":
                    message.ack()
                elif do == "retry":
                    message.retry()
                elif do == "retry_delay":
                    message.retry(delaySeconds=message.body["delay"])
                elif do == "retry_then_ack":
                    message.retry()
                    message.ack()
                elif do == "retry_all":
                    batch.retryAll({"delaySeconds": message.body["delay"]})
                elif do == "ack_all_then_raise":
                    batch.ackAll()
                    failing = True
                elif do == "retry_first_attempt" and message.attempts == 1:
                    message.retry()
                elif do == "raise":
                    failing = True
            if failing:
                raise RuntimeError("consumer failed on purpose")
"""
JOBS = {"binding": "JOBS", "queue": "jobs"}


@pytest.fixture
async def edges() -> AsyncIterator[list[Edge]]:
    opened: list[Edge] = []
    yield opened
    for edge in opened:
        await edge.aclose()


@pytest.fixture
def queue_edge(worker_project: Callable[..., Path], edges: list[Edge]) -> Callable[..., Any]:
    async def make(consumers: Sequence[Mapping[str, Any]], *, producers: Sequence[Mapping[str, Any]] = (JOBS,),
                   source: str = CONSUMER, **project: Any) -> Edge:
        root = write_queue_project(worker_project, source, producers=producers, consumers=consumers, **project)
        return await start_edge(root, edges)
    return make


def jobs(edge: Edge) -> Any:
    return edge.script().instance(edge.colos[0])[1].JOBS


def deliveries(edge: Edge, queue: str = "jobs") -> list[tuple[int, int]]:
    """(n, attempts) of each delivery of the queue's messages, in order."""
    return [(n, attempts) for q, n, attempts, _ in consumer_module(edge).DELIVERIES if q == queue]


async def settled(edge: Edge, queue: str = "jobs") -> None:
    """Until the queue is empty (every delivery settled)."""
    broker = queue_broker(edge)
    async with asyncio.timeout(5):
        while (await broker.backlog(queue)).message_count:
            await asyncio.sleep(0.01)


def consumer(**settings: Any) -> dict[str, Any]:
    return {"queue": "jobs", "max_batch_timeout": 0, "retry_delay": 0, **settings}


# ---- batching ----------------------------------------------------------------------------------------

async def test_full_batches_go_at_once_and_the_rest_after_the_timeout(queue_edge) -> None:
    edge = await queue_edge([consumer(max_batch_size=10, max_batch_timeout=1)])
    sent = time.monotonic()
    await jobs(edge).sendBatch([{"body": {"n": n, "do": "ack"}} for n in range(25)])
    batches = consumer_module(edge).BATCHES
    await wait_until(lambda: len(batches) == 3)
    sizes = [len(numbers) for _, numbers, _ in batches]
    times = [at - sent for _, _, at in batches]
    assert sizes == [10, 10, 5]
    assert [n for _, numbers, _ in batches for n in numbers] == list(range(25))
    assert times[1] < 0.5  # full batches do not wait for the timeout
    assert times[2] >= 1.0  # the partial one does


async def test_a_partial_batch_waits_for_the_timeout(queue_edge) -> None:
    edge = await queue_edge([consumer(max_batch_size=10, max_batch_timeout=0.4)])
    sent = time.monotonic()
    for n in range(3):
        await jobs(edge).send({"n": n})
    batches = consumer_module(edge).BATCHES
    await wait_until(lambda: len(batches) == 1)
    [(_, numbers, at)] = batches
    assert numbers == [0, 1, 2]
    assert 0.4 <= at - sent < 2.0


async def test_send_delay_and_delivery_delay_hold_the_first_delivery(queue_edge) -> None:
    edge = await queue_edge([consumer()], producers=(JOBS, {"binding": "SLOW", "queue": "jobs", "delivery_delay": 0.5}))
    sent = time.monotonic()
    await jobs(edge).send({"n": 1}, delaySeconds=0.3)
    await jobs(edge).sendBatch([{"body": {"n": 2}, "delaySeconds": 0.6}, {"body": {"n": 3}}], delaySeconds=0.2)
    await edge.script().instance("DFW")[1].SLOW.send({"n": 4})
    await jobs(edge).send({"n": 5})
    log = consumer_module(edge).DELIVERIES
    await wait_until(lambda: len(log) == 5)
    waited = {n: at - sent for _, n, _, at in log}
    assert waited[5] < 0.2
    assert 0.2 <= waited[3] < 0.3 + 0.25
    assert 0.3 <= waited[1] and 0.5 <= waited[4] and 0.6 <= waited[2]


# ---- acks and retries --------------------------------------------------------------------------------

async def test_explicit_retry_delivers_again_with_one_more_attempt(queue_edge) -> None:
    edge = await queue_edge([consumer()])
    await jobs(edge).sendBatch([{"body": {"n": 1, "do": "retry_first_attempt"}}, {"body": {"n": 2}}])
    await settled(edge)
    assert sorted(deliveries(edge)) == [(1, 1), (1, 2), (2, 1)]


async def test_a_raising_handler_retries_what_it_did_not_ack(queue_edge, caplog) -> None:
    edge = await queue_edge([consumer(max_retries=1)])
    with caplog.at_level(logging.ERROR, logger="edgewise.queues"):
        await jobs(edge).sendBatch([{"body": {"n": 1, "do": "ack"}}, {"body": {"n": 2, "do": "raise"}},
                                    {"body": {"n": 3}}])
        await settled(edge)
    # 1 was acked before the raise; 2 and 3 went again, and again failed: dropped after max_retries
    assert deliveries(edge) == [(1, 1), (2, 1), (3, 1), (2, 2), (3, 2)]
    assert "consumer failed on purpose" in caplog.text


async def test_first_call_wins_and_a_message_call_beats_the_batch_call(queue_edge) -> None:
    edge = await queue_edge([consumer(max_retries=1)])
    await jobs(edge).sendBatch([{"body": {"n": 1, "do": "retry_then_ack"}},  # retried: retry came first
                                {"body": {"n": 2, "do": "ack_all_then_raise"}}])  # ackAll holds despite the raise
    await settled(edge)
    assert deliveries(edge) == [(1, 1), (2, 1), (1, 2)]


async def test_retry_delays_message_batch_and_consumer(queue_edge) -> None:
    edge = await queue_edge([consumer(max_retries=1, retry_delay=0.3)])
    await jobs(edge).send({"n": 1, "do": "retry_delay", "delay": 0.6})
    await jobs(edge).send({"n": 2, "do": "retry"})
    await jobs(edge).send({"n": 3, "do": "retry_all", "delay": 0.45})
    await settled(edge)
    log = consumer_module(edge).DELIVERIES
    gaps = {n: [at for _, m, _, at in log if m == n] for n in (1, 2, 3)}
    gap = {n: times[1] - times[0] for n, times in gaps.items()}
    assert 0.6 <= gap[1] < 1.2  # retry(delaySeconds=) over the consumer's retry_delay
    assert 0.3 <= gap[2] < 0.6  # the consumer's retry_delay
    assert 0.45 <= gap[3] < 0.9  # retryAll(delaySeconds=)


async def test_retry_checks_its_options(queue_edge) -> None:
    source = CONSUMER.replace("message.retry(delaySeconds=message.body[\"delay\"])",
                              "message.retry(delaySeconds=99999)")
    edge = await queue_edge([consumer(max_retries=0)], source=source)
    await jobs(edge).send({"n": 1, "do": "retry_delay", "delay": 1})
    await settled(edge)  # the error is the handler's: its message is retried, then dropped (max_retries 0)
    assert deliveries(edge) == [(1, 1)]


# ---- max_retries and the dead-letter queue -----------------------------------------------------------

async def test_past_max_retries_into_the_dead_letter_queue_and_its_consumer(queue_edge) -> None:
    edge = await queue_edge([consumer(max_retries=2, dead_letter_queue="jobs-dlq"),
                             {"queue": "jobs-dlq", "max_batch_timeout": 0}])
    await jobs(edge).sendBatch([{"body": {"n": 1, "do": "raise"}}, {"body": {"n": 2, "do": "ack"}}])
    await settled(edge)
    await settled(edge, "jobs-dlq")
    assert deliveries(edge) == [(1, 1), (2, 1), (1, 2), (1, 3)]  # 1 try + 2 retries
    assert deliveries(edge, "jobs-dlq") == [(1, 1)]  # a fresh message there, attempts from 1


async def test_a_dead_letter_queue_without_consumer_keeps_the_messages(queue_edge) -> None:
    edge = await queue_edge([consumer(max_retries=0, dead_letter_queue="parked")],
                            producers=(JOBS, {"binding": "PARKED", "queue": "parked"}))
    await jobs(edge).send({"n": 1, "do": "retry"})
    await settled(edge)
    metrics = await edge.script().instance("DFW")[1].PARKED.metrics()
    assert metrics.backlogCount == 1


async def test_past_max_retries_without_dead_letter_queue_is_dropped_with_a_log_line(queue_edge, caplog) -> None:
    edge = await queue_edge([consumer(max_retries=0)])
    with caplog.at_level(logging.WARNING, logger="edgewise.queues"):
        await jobs(edge).send({"n": 1, "do": "retry"})
        await settled(edge)
    assert deliveries(edge) == [(1, 1)]
    assert "dropped after 1 attempts (max_retries = 0, no dead_letter_queue)" in caplog.text


# ---- handlers ----------------------------------------------------------------------------------------

async def test_legacy_on_queue_and_a_relaxed_class_handler(queue_edge) -> None:
    legacy = """
        SEEN = []

        async def on_fetch(request, env):
            pass

        def on_queue(batch, env):
            SEEN.append((batch.queue, [m.body for m in batch.messages], env.WHO))
    """
    edge = await queue_edge([consumer()], source=legacy, compatibility_date="2025-01-01", vars={"WHO": "legacy"})
    await jobs(edge).send("hello", contentType="text")
    await wait_until(lambda: consumer_module(edge).SEEN == [("jobs", ["hello"], "legacy")])


async def test_a_worker_without_queue_handler_fails_its_batches(queue_edge, caplog) -> None:
    source = """
        from workers import Response, WorkerEntrypoint

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response("no queue handler")
    """
    edge = await queue_edge([consumer(max_retries=0)], source=source)
    with caplog.at_level(logging.ERROR, logger="edgewise.queues"):
        await jobs(edge).send({"n": 1})
        await settled(edge)
    assert "Handler does not export a queue() function." in caplog.text


async def test_each_batch_is_a_queue_event_in_the_tail(queue_edge) -> None:
    edge = await queue_edge([consumer()])
    with edge.hub.subscribe() as events:
        await jobs(edge).sendBatch([{"body": {"n": 1}}, {"body": {"n": 2}}])
        async with asyncio.timeout(5):
            event = await events.get()
    assert event["event"] == {"type": "queue", "queue": "jobs", "batch_size": 2}
    assert event["outcome"] == "ok" and event["edgewise"]["colo"] == "DFW"


# ---- persistence -------------------------------------------------------------------------------------

async def test_messages_survive_an_edge_restart(queue_edge, edges) -> None:
    first = await queue_edge([], producers=(JOBS,))  # no consumer yet: the messages wait
    await jobs(first).sendBatch([{"body": {"n": n, "do": "ack"}} for n in range(3)])
    await first.aclose()
    edges.remove(first)
    second = await queue_edge([consumer()])  # the same project folder, so the same state
    await settled(second)
    assert deliveries(second) == [(0, 1), (1, 1), (2, 1)]


async def test_a_batch_cut_off_by_a_close_goes_again_with_one_more_attempt(queue_edge, edges) -> None:
    blocking = CONSUMER.replace("            failing = False",
                                "            failing = False\n            await __import__('asyncio').sleep(60)")
    first = await queue_edge([consumer()], source=blocking)
    await jobs(first).sendBatch([{"body": {"n": 1}}, {"body": {"n": 2}}])
    await wait_until(lambda: len(consumer_module(first).BATCHES) == 1)
    await first.aclose()  # mid-handler
    edges.remove(first)
    second = await queue_edge([consumer()])
    await settled(second)
    assert deliveries(second) == [(1, 2), (2, 2)]


async def test_a_worker_that_only_consumes_gets_what_an_earlier_run_left(queue_edge, edges) -> None:
    first = await queue_edge([])  # produces only: the messages wait in the store
    await jobs(first).send({"n": 1, "do": "ack"})
    await jobs(first).send({"n": 2, "do": "ack"})
    await first.aclose()
    edges.remove(first)
    second = await queue_edge([consumer()], producers=())  # no producer binding at all
    await wait_until(lambda: len(deliveries(second)) == 2)  # (settled() would make the broker itself)
    await asyncio.sleep(0.2)
    assert deliveries(second) == [(1, 1), (2, 1)]  # once each: the broker started once


# ---- several Workers ---------------------------------------------------------------------------------

async def test_the_consumer_may_be_another_worker_of_the_edge(worker_project, tmp_path, edges) -> None:
    producer_root = write_queue_project(worker_project, """
        from workers import Response, WorkerEntrypoint

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                await self.env.JOBS.send({"n": 1, "do": "ack"})
                return Response("sent")
    """, producers=(JOBS,))
    consumer_root = tmp_path / "consumer"
    (consumer_root / "src").mkdir(parents=True)
    (consumer_root / "src" / "entry.py").write_text(textwrap.dedent(CONSUMER))
    (consumer_root / "wrangler.toml").write_text(
        'name = "jobs-consumer"\nmain = "src/entry.py"\ncompatibility_date = "2025-11-02"\n'
        'compatibility_flags = ["python_workers"]\n' + queue_tables(consumers=[consumer()]))
    edge = Edge(load_config(producer_root), workers=[load_config(consumer_root)])
    edges.append(edge)
    queue_broker(edge)
    await edge.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url="http://edge.test") as client:
        assert (await client.get("/")).text == "sent"
    await settled(edge)
    assert [(n, attempts) for _, n, attempts, _ in consumer_module(edge, "jobs-consumer").DELIVERIES] == [(1, 1)]
