"""Queue consumers: the ``queues.consumers`` tables of every Worker of the edge, checked, and the call
into a consumer Worker's ``queue`` handler.

As on Cloudflare a queue has at most one consumer. ``type = "http_pull"`` consumers are pulled over
HTTP on Cloudflare, which edgewise does not serve: their queues keep their messages.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config_error import ConfigError
from ...config_values import (
    expect_int,
    expect_nonempty_str,
    expect_number,
    reject_unknown_keys,
)
from ...worker import Worker, arity, handler_arity
from .batch import MessageBatch
from .bodies import MAX_DELAY_S

CONSUMER_KEYS = ("queue", "type", "max_batch_size", "max_batch_timeout", "max_retries", "dead_letter_queue",
                 "retry_delay", "max_concurrency", "visibility_timeout_ms")
MAX_BATCH_SIZE = 100
MAX_BATCH_TIMEOUT_S = 60
MAX_RETRIES = 100


@dataclass(frozen=True)
class ConsumerSettings:
    """One ``queues.consumers`` table: Cloudflare's defaults (10 messages, 5 s, 3 retries) and ranges."""

    queue: str
    script_name: str
    max_batch_size: int = 10
    max_batch_timeout_s: float = 5.0
    max_retries: int = 3
    dead_letter_queue: str | None = None
    retry_delay_s: float = 0.0
    is_pull: bool = False  # type = "http_pull": not delivered to a Worker

    @property
    def max_batch_timeout_ms(self) -> int:
        return round(self.max_batch_timeout_s * 1000)


def consumer_settings(table: Mapping[str, Any], script_name: str) -> ConsumerSettings:
    """One table as written; a ConfigError names the key (relative to the table) and what is allowed."""
    reject_unknown_keys(table, CONSUMER_KEYS, None)
    if "queue" not in table:
        raise ConfigError(None, "queue", "is missing: name the queue this Worker consumes")
    queue = expect_nonempty_str(table["queue"], "queue")
    kind = table.get("type", "worker")
    if kind not in ("worker", "http_pull"):
        raise ConfigError(None, "type", f'must be "worker" or "http_pull", got {kind!r}')
    dead_letter_queue = table.get("dead_letter_queue")
    if dead_letter_queue is not None:
        dead_letter_queue = expect_nonempty_str(dead_letter_queue, "dead_letter_queue")
        if dead_letter_queue == queue:
            raise ConfigError(None, "dead_letter_queue", f"must name another queue than {queue!r}")
    return ConsumerSettings(
        queue=queue, script_name=script_name,
        max_batch_size=_ranged(table, "max_batch_size", 10, 1, MAX_BATCH_SIZE, integer=True),
        max_batch_timeout_s=_ranged(table, "max_batch_timeout", 5, 0, MAX_BATCH_TIMEOUT_S),
        max_retries=_ranged(table, "max_retries", 3, 0, MAX_RETRIES, integer=True),
        dead_letter_queue=dead_letter_queue,
        retry_delay_s=_ranged(table, "retry_delay", 0, 0, MAX_DELAY_S),
        is_pull=kind == "http_pull",
    )


def _ranged(table: Mapping[str, Any], key: str, default: float, low: float, high: float,
            integer: bool = False) -> Any:
    value = table.get(key, default)
    value = expect_int(value, key, int(low)) if integer else expect_number(value, key, low)
    if value > high:
        raise ConfigError(None, key, f"must be at most {high:g}, got {value:g}")
    return value


def consumers_by_queue(declared: Iterable[tuple[str, Path, tuple[Mapping[str, Any], ...]]]
                       ) -> dict[str, ConsumerSettings]:
    """(Worker name, config file, its queues.consumers) for every Worker -> the consumer of each queue."""
    consumers: dict[str, ConsumerSettings] = {}
    for script_name, config_file, tables in declared:
        for index, table in enumerate(tables):
            key = f"queues.consumers[{index}]"
            try:
                settings = consumer_settings(table, script_name)
            except ConfigError as error:
                raise error.under(key).with_file(config_file) from None
            other = consumers.get(settings.queue)
            if other is not None:
                raise ConfigError(config_file, f"{key}.queue", f"{settings.queue!r} already has a consumer "
                                  f"(Worker {other.script_name!r}); a queue has one consumer on Cloudflare")
            consumers[settings.queue] = settings
    return consumers


async def run_queue_handler(worker: Worker, batch: MessageBatch, env: Any, ctx: Any) -> None:
    """``Default.queue(self, batch, env, ctx)`` (env and ctx passed as None: a class reads self.env and
    self.ctx, as on Cloudflare), or the legacy module-level ``on_queue(batch, env, ctx)``; both called
    with as many of those arguments as they take."""
    if worker.entrypoint is not None:
        count = handler_arity(worker.entrypoint, "queue")
        if count is None:
            raise TypeError("Handler does not export a queue() function.")
        instance = worker.entrypoint(ctx, env)  # a new instance per invocation, as workerd makes
        instance.ctx, instance.env = ctx, env
        result = instance.queue(*(batch, None, None)[:count])
    else:
        function = getattr(worker.module, "on_queue", None)
        if not callable(function):
            raise TypeError("Handler does not export a queue() function.")
        result = function(*(batch, env, ctx)[:arity(function)])
    if inspect.isawaitable(result):
        await result
