"""The Workflows engine's SQLite file: instances, their steps (memoized results, sleeps, retries) and
the events sent to them. Every call blocks: the engine runs it on a worker thread; the data commands
(`edgewise workflows ... --local`) open the same file while `edgewise dev` runs.

Values (params, step results, outputs, event payloads) are stored as JSON text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..sqlite_pool import BUSY_TIMEOUT_S, ThreadConnections

FILE_NAME = "workflows.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    workflow TEXT NOT NULL,
    id TEXT NOT NULL,
    class_name TEXT NOT NULL,
    script_name TEXT NOT NULL,
    params TEXT NOT NULL,            -- JSON
    status TEXT NOT NULL,            -- queued | running | paused | errored | terminated | complete | waiting | waitingForPause
    output TEXT,                     -- JSON of run()'s return value
    error TEXT,                      -- JSON {name, message}
    colo TEXT,                       -- the PoP it was created at, where it runs
    created_at REAL NOT NULL,        -- seconds since the epoch
    started_at REAL,
    ended_at REAL,
    modified_at REAL NOT NULL,
    PRIMARY KEY (workflow, id)
);
CREATE TABLE IF NOT EXISTS steps (
    workflow TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    name TEXT NOT NULL,
    count INTEGER NOT NULL,          -- the nth use of this name in a run: Cloudflare's counter suffix
    type TEXT NOT NULL,              -- step | sleep | waitForEvent
    status TEXT NOT NULL,            -- running | waiting | complete | errored
    attempt INTEGER NOT NULL DEFAULT 0,
    result TEXT,                     -- JSON
    error TEXT,                      -- JSON {name, message}
    wake_at REAL,                    -- sleep deadline, next retry, event timeout (seconds since the epoch)
    started_at REAL NOT NULL,
    ended_at REAL,
    PRIMARY KEY (workflow, instance_id, name, count)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,           -- JSON
    sent_at REAL NOT NULL,
    taken_by TEXT                    -- the waitForEvent step ("name#count") that received it; NULL: not yet
);
CREATE INDEX IF NOT EXISTS events_waiting ON events (workflow, instance_id, type) WHERE taken_by IS NULL;
"""
UNFINISHED = ("queued", "running", "waiting", "waitingForPause")
FINISHED = ("errored", "terminated", "complete")


class DuplicateInstanceError(ValueError):
    """``create`` with an id the workflow already has."""


@dataclass(frozen=True)
class InstanceRow:
    workflow: str
    id: str
    class_name: str
    script_name: str
    params: str
    status: str
    output: str | None
    error: str | None
    colo: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    modified_at: float

    def describe(self) -> dict[str, Any]:
        """``status()``'s answer: {status, error?, output?}."""
        found: dict[str, Any] = {"status": self.status}
        if self.error is not None:
            found["error"] = json.loads(self.error)
        if self.output is not None:
            found["output"] = json.loads(self.output)
        return found


@dataclass(frozen=True)
class StepRow:
    name: str
    count: int
    type: str
    status: str
    attempt: int
    result: str | None
    error: str | None
    wake_at: float | None
    started_at: float
    ended_at: float | None


INSTANCE_COLUMNS = ", ".join(InstanceRow.__dataclass_fields__)
STEP_COLUMNS = ", ".join(StepRow.__dataclass_fields__)


class WorkflowStore:
    """The engine's one SQLite file (WAL: a dev run and the data commands use it at once)."""

    def __init__(self, folder: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = folder / FILE_NAME
        self._db = ThreadConnections(self.path, f"the Workflows store {self.path}", SCHEMA, busy_timeout_s)

    def close(self) -> None:
        self._db.close()

    # instances

    def create(self, workflow: str, instance_id: str, class_name: str, script_name: str, params: str,
               colo: str | None, status: str = "queued") -> InstanceRow:
        now = time.time()
        with self._db.write() as connection:
            if connection.execute("SELECT 1 FROM instances WHERE workflow = ? AND id = ?",
                                  (workflow, instance_id)).fetchone():
                raise DuplicateInstanceError(f"workflow {workflow!r} already has an instance with id {instance_id!r}; "
                                             "instance ids must be unique (leave id out for a random one)")
            connection.execute(f"INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?,"
                               " ?, NULL, NULL, ?)",
                               (workflow, instance_id, class_name, script_name, params, status, colo, now, now))
        return InstanceRow(workflow, instance_id, class_name, script_name, params, status, None, None, colo,
                           now, None, None, now)

    def instance(self, workflow: str, instance_id: str) -> InstanceRow | None:
        with self._db.session() as connection:
            row = connection.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE workflow = ? AND id = ?",
                                     (workflow, instance_id)).fetchone()
        return None if row is None else InstanceRow(*row)

    def instances(self, workflow: str | None = None, statuses: tuple[str, ...] = ()) -> list[InstanceRow]:
        """Instances by creation time (oldest first), of one workflow or all, with one of `statuses` or any."""
        where, params = [], []
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            params += statuses
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._db.session() as connection:
            rows = connection.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances {clause} ORDER BY created_at, id",
                                      params).fetchall()
        return [InstanceRow(*row) for row in rows]

    def set_status(self, workflow: str, instance_id: str, status: str, *, output: str | None = None,
                   error: str | None = None, only_from: tuple[str, ...] = ()) -> bool:
        """Moves the instance to `status` (from one of `only_from`, if given); whether it moved.

        Running stamps the start once; a finished status stamps the end and keeps output or error."""
        now = time.time()
        sets = ["status = ?", "modified_at = ?"]
        params: list[Any] = [status, now]
        if status == "running":
            sets.append("started_at = COALESCE(started_at, ?)")
            params.append(now)
        if status in FINISHED:
            sets += ["ended_at = ?", "output = ?", "error = ?"]
            params += [now, output, error]
        where = "workflow = ? AND id = ?"
        params += [workflow, instance_id]
        if only_from:
            where += f" AND status IN ({','.join('?' * len(only_from))})"
            params += only_from
        with self._db.session() as connection:
            return connection.execute(f"UPDATE instances SET {', '.join(sets)} WHERE {where}", params).rowcount > 0

    def reset(self, workflow: str, instance_id: str) -> None:
        """Forget every step and event of the instance and queue it again (``restart``)."""
        now = time.time()
        with self._db.write() as connection:
            connection.execute("DELETE FROM steps WHERE workflow = ? AND instance_id = ?", (workflow, instance_id))
            connection.execute("DELETE FROM events WHERE workflow = ? AND instance_id = ?", (workflow, instance_id))
            connection.execute("UPDATE instances SET status = 'queued', output = NULL, error = NULL, started_at = NULL,"
                               " ended_at = NULL, modified_at = ? WHERE workflow = ? AND id = ?",
                               (now, workflow, instance_id))

    # steps

    def step(self, workflow: str, instance_id: str, name: str, count: int) -> StepRow | None:
        with self._db.session() as connection:
            row = connection.execute(f"SELECT {STEP_COLUMNS} FROM steps WHERE workflow = ? AND instance_id = ?"
                                     " AND name = ? AND count = ?", (workflow, instance_id, name, count)).fetchone()
        return None if row is None else StepRow(*row)

    def steps(self, workflow: str, instance_id: str) -> list[StepRow]:
        with self._db.session() as connection:
            rows = connection.execute(f"SELECT {STEP_COLUMNS} FROM steps WHERE workflow = ? AND instance_id = ?"
                                      " ORDER BY started_at, rowid", (workflow, instance_id)).fetchall()
        return [StepRow(*row) for row in rows]

    def save_step(self, workflow: str, instance_id: str, row: StepRow) -> None:
        with self._db.session() as connection:
            connection.execute(
                f"INSERT OR REPLACE INTO steps (workflow, instance_id, {STEP_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (workflow, instance_id, *row.__dict__.values()))

    # events

    def add_event(self, workflow: str, instance_id: str, event_type: str, payload: str) -> None:
        with self._db.session() as connection:
            connection.execute("INSERT INTO events (workflow, instance_id, type, payload, sent_at) VALUES (?, ?, ?, ?, ?)",
                               (workflow, instance_id, event_type, payload, time.time()))

    def receive_event(self, workflow: str, instance_id: str, event_type: str, step: StepRow,
                      result_of: Callable[[str, float], str]) -> StepRow | None:
        """Hands the oldest event of `event_type` not yet received to the waitForEvent `step`: the step,
        completed with ``result_of(payload JSON, sent_at)``, in the same transaction; None: no such event."""
        taker = f"{step.name}#{step.count}"
        with self._db.write() as connection:
            row = connection.execute("SELECT seq, payload, sent_at FROM events WHERE workflow = ? AND instance_id = ?"
                                     " AND type = ? AND taken_by IS NULL ORDER BY seq LIMIT 1",
                                     (workflow, instance_id, event_type)).fetchone()
            if row is None:
                return None
            connection.execute("UPDATE events SET taken_by = ? WHERE seq = ?", (taker, row[0]))
            done = replace(step, status="complete", result=result_of(row[1], row[2]), wake_at=None,
                           ended_at=time.time())
            connection.execute(f"INSERT OR REPLACE INTO steps (workflow, instance_id, {STEP_COLUMNS})"
                               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (workflow, instance_id, *done.__dict__.values()))
        return done
