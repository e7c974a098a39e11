"""A binding's SQLite file, used from the worker threads its calls run on: one connection per thread.

The file runs in WAL mode (readers never wait for the writer) with ``synchronous=NORMAL`` (WAL stays
consistent; a power cut may lose the last write) and a busy timeout for writers, so every PoP and
other edgewise processes (the data commands) may use it at once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's write to finish


class ThreadConnections:
    """Connections to ``path``, one per thread; ``what`` names the store in the error after ``close``."""

    def __init__(self, path: Path, what: str, schema: str, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path, self.what, self.busy_timeout_s = path, what, busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._in_use: set[sqlite3.Connection] = set()
        self._lock = threading.Lock()
        self._closed = False
        with self.session() as connection:
            connection.executescript(schema)

    @contextmanager
    def session(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection; ``close`` leaves one in use to be closed by its thread afterwards."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        fresh = self._connect() if connection is None and not self._closed else None
        with self._lock:
            if self._closed:
                if fresh is not None:
                    fresh.close()
                raise RuntimeError(f"{self.what} is closed (the dev run stopped or reloaded its bindings)")
            if fresh is not None:
                connection = self._local.connection = fresh
                self._connections.append(fresh)
            self._in_use.add(connection)
        try:
            yield connection
        finally:
            with self._lock:
                self._in_use.discard(connection)
                if self._closed:
                    connection.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection in an immediate transaction: committed, or rolled back on error."""
        with self.session() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def close(self) -> None:
        """Closes the idle connections now; one in use is closed by its thread when its call ends."""
        with self._lock:
            self._closed = True
            for connection in self._connections:
                if connection not in self._in_use:
                    connection.close()
            self._connections.clear()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                     check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix`, for `key < ?` in a prefix scan
    (code point order is UTF-8 byte order, SQLite's BINARY order on UTF-8 text); None: no bound."""
    while prefix and prefix[-1] == "\U0010ffff":
        prefix = prefix[:-1]
    if not prefix:
        return None
    following = ord(prefix[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are not characters: the next one is U+E000
        following = 0xE000
    return prefix[:-1] + chr(following)
