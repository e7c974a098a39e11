"""Every queue's messages in one SQLite file under the state folder (``<state>/queues/queues.sqlite``).

A message is written before ``send()`` returns and deleted only once its batch's handler finished
with it acknowledged, so a process killed mid-batch delivers it again on the next start. ``attempts``
counts the deliveries begun, raised in the same transaction that hands a batch out, so that
redelivery after a crash reads one more attempt. Every call here blocks: the broker and the binding
run them on worker threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..sqlite_pool import ThreadConnections

DATABASE_FILE = "queues.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- send order
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,     -- when the producer sent it (the consumer's `timestamp`)
    visible_ms INTEGER NOT NULL,  -- not delivered before (send delay, retry delay)
    attempts INTEGER NOT NULL DEFAULT 0  -- deliveries begun
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, visible_ms);
CREATE INDEX IF NOT EXISTS messages_in_order ON messages (queue, seq);
"""


@dataclass(frozen=True)
class NewMessage:
    id: str
    body: bytes
    content_type: str
    sent_ms: int
    visible_ms: int


@dataclass(frozen=True)
class StoredMessage:
    id: str
    body: bytes
    content_type: str
    sent_ms: int
    attempts: int  # including the delivery that handed it out


@dataclass(frozen=True)
class Backlog:
    """What `metrics()` and `queues list` report for one queue."""

    queue: str
    message_count: int
    message_bytes: int
    oldest_sent_ms: int | None


@dataclass(frozen=True)
class Readiness:
    """How many messages a delivery could take now (at most the batch size asked about), and the
    earliest time any message of the queue is visible (None: the queue is empty)."""

    ready_count: int
    first_visible_ms: int | None


class QueueStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = ThreadConnections(path, f"the queue store {path}", SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, queue: str, messages: Sequence[NewMessage]) -> None:
        """All of them or none (one transaction)."""
        with self._db.write() as connection:
            connection.executemany(
                "INSERT INTO messages (id, queue, body, content_type, sent_ms, visible_ms) VALUES (?, ?, ?, ?, ?, ?)",
                [(m.id, queue, m.body, m.content_type, m.sent_ms, m.visible_ms) for m in messages])

    def readiness(self, queue: str, now_ms: int, batch_size: int) -> Readiness:
        with self._db.session() as connection:
            [ready_count] = connection.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE queue = ? AND visible_ms <= ? LIMIT ?)",
                (queue, now_ms, batch_size)).fetchone()
            [first_visible_ms] = connection.execute(
                "SELECT MIN(visible_ms) FROM messages WHERE queue = ?", (queue,)).fetchone()
        return Readiness(ready_count, first_visible_ms)

    def take(self, queue: str, now_ms: int, batch_size: int) -> list[StoredMessage]:
        """Up to `batch_size` visible messages in send order, their attempts raised by one."""
        with self._db.write() as connection:
            # +visible_ms: walk the queue in send order (messages_in_order) rather than sort every visible message
            rows = connection.execute(
                "SELECT seq, id, body, content_type, sent_ms, attempts FROM messages"
                " WHERE queue = ? AND +visible_ms <= ? ORDER BY seq LIMIT ?", (queue, now_ms, batch_size)).fetchall()
            connection.executemany("UPDATE messages SET attempts = attempts + 1 WHERE seq = ?",
                                   [(row[0],) for row in rows])
        return [StoredMessage(id, body, content_type, sent_ms, attempts + 1)
                for _, id, body, content_type, sent_ms, attempts in rows]

    def settle(self, *, delete: Iterable[str] = (), delay: Iterable[tuple[str, int]] = (),
               move: Iterable[tuple[str, str]] = (), now_ms: int = 0) -> None:
        """One batch's outcome in one transaction: `delete` ids (acknowledged, or dropped past their
        retries), `delay` (id, visible_ms) to deliver again, `move` (id, queue) to a dead-letter queue,
        where the message starts afresh (visible now, no attempts)."""
        with self._db.write() as connection:
            connection.executemany("DELETE FROM messages WHERE id = ?", [(id,) for id in delete])
            connection.executemany("UPDATE messages SET visible_ms = ? WHERE id = ?",
                                   [(visible_ms, id) for id, visible_ms in delay])
            connection.executemany("UPDATE messages SET queue = ?, visible_ms = ?, attempts = 0 WHERE id = ?",
                                   [(queue, now_ms, id) for id, queue in move])

    def backlog(self, queue: str) -> Backlog:
        with self._db.session() as connection:
            count, size, oldest = connection.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(sent_ms) FROM messages WHERE queue = ?",
                (queue,)).fetchone()
        return Backlog(queue, count, size, oldest)

    def backlogs(self) -> list[Backlog]:
        """Every queue holding messages, by name."""
        with self._db.session() as connection:
            rows = connection.execute(
                "SELECT queue, COUNT(*), SUM(LENGTH(body)), MIN(sent_ms) FROM messages GROUP BY queue ORDER BY queue"
            ).fetchall()
        return [Backlog(*row) for row in rows]


def database_path(folder: Path) -> Path:
    return folder / DATABASE_FILE
