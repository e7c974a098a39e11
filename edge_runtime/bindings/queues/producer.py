"""The ``queues.producers`` binding: ``await env.QUEUE.send(body, contentType=, delaySeconds=)``,
``await env.QUEUE.sendBatch([{"body", "contentType"?, "delaySeconds"?}], delaySeconds=)`` and
``await env.QUEUE.metrics()``, with Cloudflare's limits. A send returns once its messages are written
to the edge's queue store (``broker.py``); a call over a limit raises and sends nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edgewise_sdk.workers import JsDict

from ...config_error import ConfigError
from .bodies import (
    DEFAULT_CONTENT_TYPE,
    MAX_BATCH_BYTES,
    MAX_BATCH_MESSAGES,
    QueueError,
    QueueTypeError,
    check_delay,
    encode_body,
    read_options,
)
from .broker import QueueBroker, queue_broker
from .store import NewMessage

if TYPE_CHECKING:
    from ...config import BindingSpec
    from ...edge import Edge
    from ...scripts import Script

SEND_OPTIONS = ("contentType", "delaySeconds")
BATCH_OPTIONS = ("delaySeconds",)
BATCH_ITEM_KEYS = ("body", "contentType", "delaySeconds")


def bind(spec: BindingSpec, edge: Edge, script: Script, colo: str) -> QueueProducer:
    """``{"binding": "MY_QUEUE", "queue": "my-queue", "delivery_delay"?: seconds}``."""
    settings = spec.settings
    queue = settings.get("queue")
    where = f"binding {spec.name!r}"
    if not isinstance(queue, str) or not queue.strip():
        raise ConfigError(script.config.file, "queues.producers",
                          f"{where}: 'queue' must name the queue it sends to, got {queue!r}")
    delivery_delay = settings.get("delivery_delay", 0)
    try:
        delivery_delay = check_delay(delivery_delay, "delivery_delay", "producer")
    except QueueError as error:
        raise ConfigError(script.config.file, "queues.producers", f"{where}: {error}") from None
    return QueueProducer(str(spec.name), queue, delivery_delay, queue_broker(edge))


class QueueProducer:
    """One producer binding; every PoP's env holds its own, all writing to the edge's one broker."""

    def __init__(self, name: str, queue: str, delivery_delay_s: float, broker: QueueBroker) -> None:
        self.name, self.queue = name, queue
        self.delivery_delay_s = delivery_delay_s
        self._broker = broker

    async def send(self, body: Any, options: Mapping[str, Any] | None = None, **keywords: Any) -> None:
        chosen = read_options(options, keywords, SEND_OPTIONS, "send")
        message = self._message(body, chosen, self.delivery_delay_s, "send", time.time())
        await self._broker.add(self.queue, [message])

    async def sendBatch(self, messages: Any, options: Mapping[str, Any] | None = None,
                        **keywords: Any) -> None:
        operation = "sendBatch"
        chosen = read_options(options, keywords, BATCH_OPTIONS, operation)
        batch_delay = chosen.get("delaySeconds", self.delivery_delay_s)
        if isinstance(messages, (str, bytes, Mapping)) or not hasattr(messages, "__iter__"):
            raise QueueTypeError(f"Queue {operation} failed: it needs a list of messages like "
                                 f'[{{"body": ...}}], got {type(messages).__name__}')
        items = list(messages)
        if not items:
            raise QueueTypeError(f"Queue {operation} failed: it needs at least one message")
        if len(items) > MAX_BATCH_MESSAGES:
            raise QueueError(f"Queue {operation} failed: batch message count of {len(items)} exceeds limit of "
                             f"{MAX_BATCH_MESSAGES}")
        sent_at = time.time()
        batch = [self._message(item.get("body"), self._item_options(item, index, operation), batch_delay,
                               f"{operation} (message {index})", sent_at)
                 for index, item in enumerate(self._checked_items(items, operation))]
        total = sum(len(message.body) for message in batch)
        if total > MAX_BATCH_BYTES:
            raise QueueError(f"Queue {operation} failed: batch size of {total} bytes exceeds limit of "
                             f"{MAX_BATCH_BYTES}")
        await self._broker.add(self.queue, batch)


    async def metrics(self) -> JsDict:
        """``{backlogCount, backlogBytes, oldestMessageTimestamp}`` (a datetime, None when empty)."""
        backlog = await self._broker.backlog(self.queue)
        oldest = None if backlog.oldest_sent_ms is None else datetime.fromtimestamp(backlog.oldest_sent_ms / 1000, UTC)
        return JsDict(backlogCount=backlog.message_count, backlogBytes=backlog.message_bytes,
                      oldestMessageTimestamp=oldest)

    def _message(self, body: Any, chosen: Mapping[str, Any], default_delay_s: float, operation: str,
                 sent_at: float) -> NewMessage:
        content_type = chosen.get("contentType", DEFAULT_CONTENT_TYPE)
        data = encode_body(body, content_type, operation)
        delay_s = check_delay(chosen.get("delaySeconds", default_delay_s), "delaySeconds", operation)
        sent_ms = int(sent_at * 1000)
        return NewMessage(uuid.uuid4().hex, data, content_type, sent_ms, sent_ms + round(delay_s * 1000))

    @staticmethod
    def _checked_items(items: list[Any], operation: str) -> list[Mapping[str, Any]]:
        for index, item in enumerate(items):
            if not isinstance(item, Mapping) or "body" not in item:
                raise QueueTypeError(f"Queue {operation} failed: message {index} must be a dict with a 'body', "
                                     f"got {type(item).__name__}")
        return items

    @staticmethod
    def _item_options(item: Mapping[str, Any], index: int, operation: str) -> dict[str, Any]:
        unknown = sorted(set(item) - set(BATCH_ITEM_KEYS))
        if unknown:
            raise QueueTypeError(f"Queue {operation} failed: message {index} has an unknown key {unknown[0]!r} "
                                 f"(keys: {', '.join(BATCH_ITEM_KEYS)})")
        return {key: item[key] for key in ("contentType", "delaySeconds") if item.get(key) is not None}

    def __repr__(self) -> str:
        return f"<Queue {self.name} -> {self.queue!r}>"
