"""Queue producers: send/sendBatch call shapes, bodies of every content type coming back to the consumer
as they were sent, metrics(), Cloudflare's limits (nothing sent over one) and config errors."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from queues_fixtures import consumer_module, start_edge, wait_until, write_queue_project

from edge_runtime.bindings.queues.bodies import QueueError
from edge_runtime.config import ConfigError
from edge_runtime.edge import Edge

CONSUMER = """
    from workers import Response, WorkerEntrypoint

    SEEN = []

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            payload = await request.json()
            await self.env.JOBS.send(payload, contentType="json")
            return Response("sent")

        async def queue(self, batch, env, ctx):
            for message in batch.messages:
                SEEN.append((batch.queue, message))
"""
PRODUCER = {"binding": "JOBS", "queue": "jobs"}
FAST = {"queue": "jobs", "max_batch_timeout": 0.05}


@pytest.fixture
async def edges() -> AsyncIterator[list[Edge]]:
    started: list[Edge] = []
    yield started
    for edge in started:
        await edge.aclose()


@pytest.fixture
def queue_edge(worker_project: Callable[..., Path], edges: list[Edge]) -> Callable[..., Any]:
    async def make(source: str = CONSUMER, producers=(PRODUCER,), consumers=(FAST,), **project: Any) -> Edge:
        root = write_queue_project(worker_project, source, producers=producers, consumers=consumers, **project)
        return await start_edge(root, edges)
    return make


def env_at(edge: Edge, colo: str | None = None) -> Any:
    return edge.script().instance(colo or edge.colos[0])[1]


async def delivered(edge: Edge, count: int) -> list[Any]:
    seen = consumer_module(edge).SEEN
    await wait_until(lambda: len(seen) >= count)
    return [message for _, message in seen]


async def test_bodies_come_back_as_sent(queue_edge) -> None:
    edge = await queue_edge()
    queue = env_at(edge).JOBS
    moment = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    await queue.send({"user": {"id": 7}, "tags": ["a", "b"]})
    await queue.send("plain words", contentType="text")
    await queue.send(b"\x00\xffraw", contentType="bytes")
    await queue.send([1, 2.5, None, True], {"contentType": "json"})
    await queue.send({"blob": b"\x01\x02", "at": moment}, contentType="v8")
    await queue.send(42)
    bodies = [message.body for message in await delivered(edge, 6)]
    assert bodies == [{"user": {"id": 7}, "tags": ["a", "b"]}, "plain words", b"\x00\xffraw", [1, 2.5, None, True],
                      {"blob": b"\x01\x02", "at": moment}, 42]
    assert bodies[0].user.id == 7  # dicts come as JsDicts, as python_from_rpc gives them
    assert type(bodies[2]) is bytes


async def test_message_fields(queue_edge) -> None:
    edge = await queue_edge()
    before = datetime.now(UTC).replace(microsecond=0)
    await env_at(edge).JOBS.send({"n": 1})
    await delivered(edge, 1)
    [(queue, message)] = consumer_module(edge).SEEN
    assert queue == "jobs"
    assert re.fullmatch(r"[0-9a-f]{32}", message.id)
    assert message.attempts == 1
    assert isinstance(message.timestamp, datetime) and message.timestamp.tzinfo is not None
    assert before <= message.timestamp <= datetime.now(UTC)


async def test_send_batch_shapes_and_order(queue_edge) -> None:
    edge = await queue_edge()
    await env_at(edge).JOBS.sendBatch([
        {"body": {"n": 1}},
        {"body": "two", "contentType": "text"},
        {"body": b"3", "contentType": "bytes", "delaySeconds": 0},
    ])
    await env_at(edge).JOBS.sendBatch([{"body": 4}], {"delaySeconds": 0})
    messages = await delivered(edge, 4)
    assert [m.body for m in messages] == [{"n": 1}, "two", b"3", 4]
    assert len({m.id for m in messages}) == 4


async def test_send_from_a_request_at_another_pop_reaches_the_consumer(queue_edge, open_client) -> None:
    edge = await queue_edge(pops=("DFW", "LHR"))
    client = open_client(edge)
    response = await client.post("/", json={"job": "resize"}, headers={"cf-ipcountry": "GB"})
    assert response.text == "sent"
    [message] = await delivered(edge, 1)
    assert message.body == {"job": "resize"}


async def test_a_queue_without_consumer_keeps_its_messages(queue_edge) -> None:
    edge = await queue_edge(producers=(PRODUCER, {"binding": "LATER", "queue": "later"}))
    later = env_at(edge).LATER
    empty = await later.metrics()
    assert empty == {"backlogCount": 0, "backlogBytes": 0, "oldestMessageTimestamp": None}
    await later.send("abc", contentType="text")
    await later.send(b"12345", contentType="bytes")
    metrics = await later.metrics()
    assert (metrics.backlogCount, metrics.backlogBytes) == (2, 8)
    assert isinstance(metrics.oldestMessageTimestamp, datetime)


BIG = "x" * (128 * 1000 + 1)


@pytest.mark.parametrize(("call", "message"), [
    (lambda q: q.send(BIG, contentType="text"), "message length of 128001 bytes exceeds limit of 128000"),
    (lambda q: q.send("x", contentType="yaml"), "contentType 'yaml' is not one of"),
    (lambda q: q.send(b"x", contentType="text"), "contentType 'text' needs a str body"),
    (lambda q: q.send("x", contentType="bytes"), "contentType 'bytes' needs a bytes body"),
    (lambda q: q.send(b"x", contentType="json"), "cannot be sent as contentType 'json'"),
    (lambda q: q.send((1, 2)), "tuple cannot be sent over RPC"),
    (lambda q: q.send("x", delaySeconds=43201), "delaySeconds must be between 0 and 43200"),
    (lambda q: q.send("x", delaySeconds=-1), "delaySeconds must be between 0 and 43200"),
    (lambda q: q.send("x", delaySeconds="soon"), "delaySeconds must be a number of seconds"),
    (lambda q: q.send("x", priority=1), "unknown option 'priority'"),
    (lambda q: q.sendBatch([]), "at least one message"),
    (lambda q: q.sendBatch({"body": 1}), "needs a list of messages"),
    (lambda q: q.sendBatch([{"body": i} for i in range(101)]), "batch message count of 101 exceeds limit of 100"),
    (lambda q: q.sendBatch([{"body": "y" * 100_000, "contentType": "text"}] * 3),
     "batch size of 300000 bytes exceeds limit of 256000"),
    (lambda q: q.sendBatch([{"body": 1}, {"value": 2}]), "message 1 must be a dict with a 'body'"),
    (lambda q: q.sendBatch([{"body": 1, "options": {}}]), "unknown key 'options'"),
    (lambda q: q.sendBatch([{"body": 1}, {"body": BIG, "contentType": "text"}]), "exceeds limit of 128000"),
])
async def test_over_a_limit_raises_and_sends_nothing(queue_edge, call, message) -> None:
    edge = await queue_edge(producers=({"binding": "LATER", "queue": "later"},), consumers=())
    queue = env_at(edge).LATER
    with pytest.raises(QueueError, match=re.escape(message)):
        await call(queue)
    assert (await queue.metrics()).backlogCount == 0


async def test_at_the_limits_is_accepted(queue_edge) -> None:
    edge = await queue_edge(producers=({"binding": "LATER", "queue": "later"},), consumers=())
    queue = env_at(edge).LATER
    await queue.send("x" * 128_000, contentType="text", delaySeconds=43200)
    await queue.sendBatch([{"body": b"y" * 2560, "contentType": "bytes"}] * 100)
    assert (await queue.metrics()).backlogCount == 101


async def test_producer_config_errors(queue_edge) -> None:
    with pytest.raises(ConfigError, match="'queue' must name the queue"):
        await queue_edge(producers=({"binding": "JOBS"},), consumers=())
    with pytest.raises(ConfigError, match="delivery_delay must be between 0 and 43200"):
        await queue_edge(producers=({"binding": "JOBS", "queue": "jobs", "delivery_delay": 50000},), consumers=())


@pytest.mark.parametrize(("consumer", "message"), [
    ({"queue": "jobs", "max_batch_size": 101}, "'queues.consumers[0].max_batch_size' must be at most 100"),
    ({"queue": "jobs", "max_batch_size": 0}, "'queues.consumers[0].max_batch_size' must be an integer >= 1"),
    ({"queue": "jobs", "max_batch_timeout": 61}, "'queues.consumers[0].max_batch_timeout' must be at most 60"),
    ({"queue": "jobs", "max_retries": 101}, "'queues.consumers[0].max_retries' must be at most 100"),
    ({"queue": "jobs", "retry_delay": -1}, "'queues.consumers[0].retry_delay' must be a number >= 0"),
    ({"queue": "jobs", "dead_letter_queue": "jobs"}, "must name another queue than 'jobs'"),
    ({"queue": "jobs", "max_batch_sise": 5}, "'queues.consumers[0].max_batch_sise' is not a known key"),
    ({"max_batch_size": 5}, "'queues.consumers[0].queue' is missing"),
])
async def test_consumer_config_errors_stop_the_start(queue_edge, consumer, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        await queue_edge(consumers=(consumer,))
    assert "wrangler.toml" in str(caught.value)


async def test_a_queue_has_one_consumer(queue_edge) -> None:
    with pytest.raises(ConfigError, match="'jobs' already has a consumer"):
        await queue_edge(consumers=(FAST, FAST))
