"""Async batches on disk: every batch's items, their state and their answers, in one SQLite file.

An item is ``queued``, then ``running`` while the backend works on it, then ``done`` with its
answer (a result or an error). A batch whose items are all done is finished; its answers are kept
for ``retention_s`` after that, then deleted, and its ``request_id`` is unknown from then on.

Several backends may share one folder (the default one under the user's state folder): each store
is an owner, alive while it holds an exclusive ``flock`` on ``owners/<owner>.lock``, and runs only
its own batches. Opening a store adopts the unfinished batches of owners that are gone (the lock
is free: the process stopped or crashed), and their ``running`` items are queued again, so a
restarted backend runs what it had not finished. Anyone may poll any batch.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DATABASE = "batches.sqlite3"
OWNERS = "owners"
BUSY_TIMEOUT_MS = 10_000  # another backend on the same folder holds the write lock for a moment at most

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    request_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,           -- the name it was queued under
    owner TEXT NOT NULL,           -- the store that runs it
    created_at REAL NOT NULL,
    finished_at REAL               -- set once every item is done
);
CREATE TABLE IF NOT EXISTS items (
    request_id TEXT NOT NULL REFERENCES batches(request_id) ON DELETE CASCADE,
    id INTEGER NOT NULL,           -- the item's index in the batch
    inputs TEXT NOT NULL,          -- JSON: what one run takes
    external_reference TEXT NOT NULL DEFAULT 'null',  -- JSON, handed back as given
    state TEXT NOT NULL DEFAULT 'queued',             -- queued | running | done
    answer TEXT,                   -- JSON: {"result": ...} or {"error": {"code", "message"}}
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, id)
);
CREATE INDEX IF NOT EXISTS items_by_state ON items(state, request_id, id);
"""

Status = Literal["queued", "running", "done"]


@dataclass(frozen=True)
class QueuedItem:
    request_id: str
    id: int
    model: str
    inputs: dict[str, Any]


@dataclass(frozen=True)
class ItemOutcome:
    """An item's answer: ``result`` on success, else ``error`` (``{"code", "message"}``)."""

    result: Any = None
    error: dict[str, Any] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def success(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class BatchState:
    request_id: str
    model: str
    status: Status
    responses: list[dict[str, Any]] | None = None  # once done: one per item, in index order
    usage: dict[str, int] | None = None

    def answer(self) -> dict[str, Any]:
        """What a poll returns: the status while pending, then the responses and their usage."""
        if self.status != "done":
            return {"status": self.status, "request_id": self.request_id, "model": self.model}
        return {"responses": self.responses, "usage": self.usage}


class BatchStore:
    """One owner's view of the batch folder; ``close()`` releases its owner lock."""

    def __init__(self, folder: Path, retention_s: float, clock: Callable[[], float] = time.time) -> None:
        if retention_s <= 0:
            raise ValueError(f"the batch retention must be positive, got {retention_s!r} s")
        self.folder = folder
        self.retention_s = retention_s
        self._clock = clock
        self.owner = uuid.uuid4().hex
        (folder / OWNERS).mkdir(parents=True, exist_ok=True)
        self._lock = _hold_lock(folder / OWNERS / f"{self.owner}.lock")
        self._db = sqlite3.connect(folder / DATABASE, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crashed process loses nothing, a power cut the last
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self.adopt_orphans()
        self.purge_expired()

    def close(self) -> None:
        self._db.close()
        os.close(self._lock)  # the lock goes with the descriptor: another store may now adopt our batches
        (self.folder / OWNERS / f"{self.owner}.lock").unlink(missing_ok=True)

    # ---- batches ----------------------------------------------------------------------

    def add(self, model: str, items: list[tuple[dict[str, Any], Any]]) -> str:
        """Queue ``items`` (inputs, external_reference) as one batch of ``model``; returns its request_id."""
        request_id = str(uuid.uuid4())
        rows = [(request_id, index, json.dumps(inputs), json.dumps(reference))
                for index, (inputs, reference) in enumerate(items)]
        with self._transaction():
            self._db.execute("INSERT INTO batches (request_id, model, owner, created_at) VALUES (?, ?, ?, ?)",
                             (request_id, model, self.owner, self._clock()))
            self._db.executemany("INSERT INTO items (request_id, id, inputs, external_reference) VALUES (?, ?, ?, ?)",
                                 rows)
        return request_id

    def state(self, request_id: str) -> BatchState | None:
        """The batch as a poll sees it; None when unknown or expired."""
        row = self._db.execute("SELECT model, finished_at FROM batches WHERE request_id = ?", (request_id,)).fetchone()
        if row is None or self._expired(row[1]):
            return None
        model, finished_at = row
        if finished_at is None:
            started = self._db.execute("SELECT 1 FROM items WHERE request_id = ? AND state != 'queued' LIMIT 1",
                                       (request_id,)).fetchone()
            return BatchState(request_id, model, "running" if started else "queued")
        rows = self._db.execute("SELECT id, answer, external_reference, prompt_tokens, completion_tokens FROM items "
                                "WHERE request_id = ? ORDER BY id", (request_id,)).fetchall()
        responses = [{"id": index, **_success(json.loads(answer)), "external_reference": json.loads(reference)}
                     for index, answer, reference, _, _ in rows]
        prompt, completion = sum(row[3] for row in rows), sum(row[4] for row in rows)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return BatchState(request_id, model, "done", responses, usage)

    def purge_expired(self) -> int:
        """Delete the batches finished more than ``retention_s`` ago; returns how many."""
        with self._transaction():
            cursor = self._db.execute("DELETE FROM batches WHERE finished_at < ?", (self._clock() - self.retention_s,))
        return cursor.rowcount

    def _expired(self, finished_at: float | None) -> bool:
        return finished_at is not None and finished_at < self._clock() - self.retention_s

    # ---- this owner's items -------------------------------------------------------------

    def queued_models(self) -> list[str]:
        """The models of this owner's batches that have queued items, oldest batch first."""
        rows = self._db.execute(
            "SELECT b.model, MIN(b.created_at) FROM batches b JOIN items i ON i.request_id = b.request_id "
            "WHERE b.owner = ? AND i.state = 'queued' GROUP BY b.model ORDER BY 2", (self.owner,)).fetchall()
        return [model for model, _ in rows]

    def claim_next(self, model: str) -> QueuedItem | None:
        """The oldest queued item of ``model`` in this owner's batches, now marked running."""
        with self._transaction():
            row = self._db.execute(
                "SELECT i.request_id, i.id, i.inputs FROM items i JOIN batches b ON i.request_id = b.request_id "
                "WHERE b.owner = ? AND b.model = ? AND i.state = 'queued' ORDER BY b.created_at, i.id LIMIT 1",
                (self.owner, model)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE items SET state = 'running' WHERE request_id = ? AND id = ?", row[:2])
        return QueuedItem(row[0], row[1], model, json.loads(row[2]))

    def requeue(self, item: QueuedItem) -> None:
        with self._transaction():
            self._db.execute("UPDATE items SET state = 'queued' WHERE request_id = ? AND id = ?",
                             (item.request_id, item.id))

    def finish(self, item: QueuedItem, outcome: ItemOutcome) -> None:
        """Keep the item's answer; the batch is finished once it was the last one left."""
        answer = {"result": outcome.result} if outcome.success else {"error": outcome.error}
        with self._transaction():
            self._db.execute("UPDATE items SET state = 'done', answer = ?, prompt_tokens = ?, completion_tokens = ? "
                             "WHERE request_id = ? AND id = ?",
                             (json.dumps(answer), outcome.prompt_tokens, outcome.completion_tokens,
                              item.request_id, item.id))
            left = self._db.execute("SELECT 1 FROM items WHERE request_id = ? AND state != 'done' LIMIT 1",
                                    (item.request_id,)).fetchone()
            if left is None:
                self._db.execute("UPDATE batches SET finished_at = ? WHERE request_id = ?",
                                 (self._clock(), item.request_id))

    def adopt_orphans(self) -> int:
        """Take over the unfinished batches of owners that are gone, their running items queued again;
        returns how many batches."""
        adopted = 0
        with self._transaction():  # one adopter at a time, whatever backends share the folder
            owners = [row[0] for row in self._db.execute(
                "SELECT DISTINCT owner FROM batches WHERE finished_at IS NULL AND owner != ?", (self.owner,))]
            for owner in filter(self._is_gone, owners):
                self._db.execute("UPDATE items SET state = 'queued' WHERE state = 'running' AND request_id IN "
                                 "(SELECT request_id FROM batches WHERE owner = ?)", (owner,))
                adopted += self._db.execute("UPDATE batches SET owner = ? WHERE owner = ? AND finished_at IS NULL",
                                            (self.owner, owner)).rowcount
        return adopted

    def _is_gone(self, owner: str) -> bool:
        path = self.folder / OWNERS / f"{owner}.lock"
        try:
            descriptor = _hold_lock(path)
        except BlockingIOError:
            return False  # its store is open, in this process or another
        os.close(descriptor)
        path.unlink(missing_ok=True)
        return True

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _hold_lock(path: Path) -> int:
    """An exclusive flock on ``path`` (made if missing), held until the descriptor is closed;
    BlockingIOError when another holds it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _success(answer: dict[str, Any]) -> dict[str, Any]:
    if "error" in answer:
        return {"success": False, "error": answer["error"]}
    return {"result": answer["result"], "success": True}
