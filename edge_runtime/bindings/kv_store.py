"""One KV namespace's SQLite file: the entries table, read and written through a connection per
thread (``sqlite_pool``), so every PoP and other edgewise processes may use the same file. Every call
here blocks: the binding runs it on a worker thread.
"""

from __future__ import annotations

from pathlib import Path

from .sqlite_pool import BUSY_TIMEOUT_S, ThreadConnections, prefix_end
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,  -- BINARY collation on UTF-8 text: listed in UTF-8 byte order, as Cloudflare does
    value BLOB NOT NULL,
    expiration INTEGER,    -- seconds since the epoch; NULL: never
    metadata TEXT          -- JSON; NULL: none
);
CREATE INDEX IF NOT EXISTS entries_by_expiration ON entries (expiration) WHERE expiration IS NOT NULL;
"""


class KvStore:
    """One namespace's SQLite file: a connection per thread, writes in immediate transactions."""

    def __init__(self, path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        self._db = ThreadConnections(path, f"the KV store {path}", SCHEMA, busy_timeout_s)

    def close(self) -> None:
        """Closes the idle connections now; one in use is closed by its thread when its call ends."""
        self._db.close()

    def get(self, keys: list[str], now: float) -> dict[str, tuple[bytes, str | None]]:
        """The live entries among `keys`: key -> (value, metadata JSON)."""
        marks = ",".join("?" * len(keys))
        with self._db.session() as connection:
            rows = connection.execute(f"SELECT key, value, metadata FROM entries WHERE key IN ({marks})"
                                      " AND (expiration IS NULL OR expiration > ?)", (*keys, now)).fetchall()
        return {key: (value, metadata) for key, value, metadata in rows}

    def entry(self, key: str, now: float) -> tuple[bytes, int | None, str | None] | None:
        """The live entry under `key`: (value, expiration, metadata JSON), or None."""
        with self._db.session() as connection:
            return connection.execute("SELECT value, expiration, metadata FROM entries WHERE key = ?"
                                      " AND (expiration IS NULL OR expiration > ?)", (key, now)).fetchone()

    def put(self, key: str, value: bytes, expiration: int | None, metadata: str | None, now: float) -> None:
        with self._db.write() as connection:
            connection.execute(
                "INSERT INTO entries (key, value, expiration, metadata) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO"
                " UPDATE SET value = excluded.value, expiration = excluded.expiration, metadata = excluded.metadata",
                (key, value, expiration, metadata))
            connection.execute("DELETE FROM entries WHERE expiration <= ?", (now,))  # expired: gone for good

    def delete(self, key: str) -> None:
        with self._db.session() as connection:
            connection.execute("DELETE FROM entries WHERE key = ?", (key,))

    def list(self, prefix: str, after: str | None, count: int, now: float) -> list[tuple[str, int | None, str | None]]:
        """Up to `count` live entries starting with `prefix` and after `after`, by key: (key, expiration, metadata)."""
        where, params = ["(expiration IS NULL OR expiration > ?)"], [now]
        if after is not None and after >= prefix:
            where.append("key > ?")
            params.append(after)
        else:
            where.append("key >= ?")
            params.append(prefix)
        end = prefix_end(prefix)
        if end is not None:
            where.append("key < ?")
            params.append(end)
        with self._db.session() as connection:
            return connection.execute(
                f"SELECT key, expiration, metadata FROM entries WHERE {' AND '.join(where)} ORDER BY key LIMIT ?",
                (*params, count)).fetchall()
