"""What a consumer's ``queue(self, batch, env, ctx)`` receives, and what it decided for each message.

Cloudflare's precedence rules (developers.cloudflare.com/queues/configuration/batching-retries):
the first ``ack()``/``retry()`` call on a message wins; a call on a message wins over ``ackAll()``/
``retryAll()`` on its batch; a message with no call is acknowledged if the handler returned and
retried if it raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .bodies import check_delay, decode_body, read_options
from .store import StoredMessage

RETRY_OPTIONS = ("delaySeconds",)


@dataclass(frozen=True)
class Decision:
    """Acknowledge, or retry after `delay_s` (None: the consumer's retry_delay)."""

    ack: bool
    delay_s: int | float | None = None


ACK = Decision(ack=True)


def _retry(operation: str, options: Any, keywords: Mapping[str, Any]) -> Decision:
    chosen = read_options(options, keywords, RETRY_OPTIONS, operation)
    delay = chosen.get("delaySeconds")
    return Decision(ack=False, delay_s=None if delay is None else check_delay(delay, "delaySeconds", operation))


class QueueMessage:
    """One message of a batch: ``id``, ``body``, ``attempts`` (1 on the first delivery), ``timestamp``
    (a UTC ``datetime``: when it was sent), ``ack()`` and ``retry(delaySeconds=)``."""

    __slots__ = ("attempts", "body", "decision", "id", "timestamp")

    def __init__(self, stored: StoredMessage) -> None:
        self.id = stored.id
        self.body = decode_body(stored.body, stored.content_type)
        self.attempts = stored.attempts
        self.timestamp = datetime.fromtimestamp(stored.sent_ms / 1000, UTC)
        self.decision: Decision | None = None

    def ack(self) -> None:
        if self.decision is None:
            self.decision = ACK

    def retry(self, options: Mapping[str, Any] | None = None, **keywords: Any) -> None:
        decision = _retry("message retry", options, keywords)
        if self.decision is None:
            self.decision = decision

    def __repr__(self) -> str:
        return f"<QueueMessage {self.id} attempts={self.attempts}>"


class MessageBatch:
    """``batch.queue``, ``batch.messages``, ``batch.ackAll()`` and ``batch.retryAll(delaySeconds=)``."""

    __slots__ = ("decision", "messages", "queue")

    def __init__(self, queue: str, stored: Sequence[StoredMessage]) -> None:
        self.queue = queue
        self.messages = [QueueMessage(message) for message in stored]
        self.decision: Decision | None = None

    def ackAll(self) -> None:
        if self.decision is None:
            self.decision = ACK

    def retryAll(self, options: Mapping[str, Any] | None = None, **keywords: Any) -> None:
        decision = _retry("batch retryAll", options, keywords)
        if self.decision is None:
            self.decision = decision


    def outcome(self, handler_failed: bool) -> dict[str, Decision]:
        """Each message's decision once the handler has finished (or raised)."""
        default = Decision(ack=False) if handler_failed else ACK
        return {message.id: message.decision or self.decision or default for message in self.messages}

    def __repr__(self) -> str:
        return f"<MessageBatch {self.queue!r} of {len(self.messages)}>"
