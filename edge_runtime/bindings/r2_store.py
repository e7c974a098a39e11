"""The R2 bucket's storage: a folder of blob files and a SQLite index of keys, objects and multipart
uploads.

An object's bytes are a file named by a random id under `blobs/`, never by its key (a key may hold
"/" or ".."); the index (WAL, busy timeout) maps keys to blobs and metadata. A new body is written
under `incoming/`, then renamed into `blobs/` in the same transaction that points the key at it, so a
reader sees the old object or the new one, whole. Every call here blocks: the binding runs it on a
worker thread.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .sqlite_pool import BUSY_TIMEOUT_S, ThreadConnections, prefix_end

INDEX_FILE = "index.sqlite"  # under <state>/r2/<bucket>/, beside blobs/ and incoming/
WRITE_BATCH_BYTES = 1024 * 1024  # incoming chunks are gathered to this size per trip to a thread
SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,  -- BINARY collation on UTF-8 text: listed in UTF-8 byte order, as R2 does
    blob TEXT NOT NULL,    -- file name under blobs/
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    uploaded_ms INTEGER NOT NULL,
    http_metadata TEXT NOT NULL,    -- JSON
    custom_metadata TEXT NOT NULL,  -- JSON
    checksums TEXT NOT NULL,        -- JSON: hash name -> hex
    storage_class TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    http_metadata TEXT NOT NULL,
    custom_metadata TEXT NOT NULL,
    storage_class TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
"""


@dataclass(frozen=True)
class ObjectRow:
    """One object as the index holds it."""

    key: str
    blob: str
    version: str
    size: int
    etag: str
    uploaded_ms: int
    http_metadata: str
    custom_metadata: str
    checksums: str
    storage_class: str


@dataclass(frozen=True)
class PartRow:
    part_number: int
    blob: str
    size: int
    etag: str


@dataclass(frozen=True)
class UploadRow:
    key: str
    http_metadata: str
    custom_metadata: str
    storage_class: str


_ROW_COLUMNS = "key, blob, version, size, etag, uploaded_ms, http_metadata, custom_metadata, checksums, storage_class"


class BlobStore:
    """One bucket's folder: blob files, incoming files, and the SQLite index (a connection per thread)."""

    def __init__(self, folder: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.folder = folder
        self.blobs, self.incoming = folder / "blobs", folder / "incoming"
        self.blobs.mkdir(exist_ok=True)
        self.incoming.mkdir(exist_ok=True)
        self._db = ThreadConnections(folder / INDEX_FILE, f"the R2 bucket {folder}", SCHEMA, busy_timeout_s)

    def close(self) -> None:
        self._db.close()

    # objects

    def lookup(self, key: str) -> ObjectRow | None:
        with self._db.session() as connection:
            return _row(connection, key)

    def open_object(self, key: str) -> tuple[ObjectRow, IO[bytes]] | None:
        """The object and its blob opened for reading; the open file keeps these bytes even if the key is
        overwritten or deleted meanwhile, as an R2 read is a snapshot."""
        while True:
            row = self.lookup(key)
            if row is None:
                return None
            try:
                return row, open(self.blobs / row.blob, "rb")
            except FileNotFoundError:
                continue  # replaced between the lookup and the open: read the index again

    def new_incoming(self) -> Path:
        return self.incoming / f"{uuid.uuid4().hex}.part"

    def commit_object(self, row: ObjectRow, incoming: Path, admits: Callable[[ObjectRow | None], bool]) -> bool:
        """Point `row.key` at `incoming` (renamed to blobs/<row.blob>) if `admits` the current object."""
        try:
            with self._db.write() as connection:
                current = _row(connection, row.key)
                if not admits(current):
                    return False
                os.replace(incoming, self.blobs / row.blob)
                connection.execute(f"INSERT OR REPLACE INTO objects ({_ROW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                   (row.key, row.blob, row.version, row.size, row.etag, row.uploaded_ms,
                                    row.http_metadata, row.custom_metadata, row.checksums, row.storage_class))
        except BaseException:
            unlink_files(incoming, self.blobs / row.blob)
            raise
        finally:
            unlink_files(incoming)
        if current is not None:
            unlink_files(self.blobs / current.blob)
        return True

    def delete(self, keys: list[str]) -> None:
        with self._db.write() as connection:
            marks = ",".join("?" * len(keys))
            blobs = [blob for (blob,) in connection.execute(f"SELECT blob FROM objects WHERE key IN ({marks})", keys)]
            connection.execute(f"DELETE FROM objects WHERE key IN ({marks})", keys)
        unlink_files(*(self.blobs / blob for blob in blobs))

    def list_entries(self, prefix: str, after: str | None, inclusive: bool, delimiter: str | None,
                     count: int) -> list[ObjectRow | str]:
        """Up to `count` entries from the position, by key: objects, and each delimited prefix once in
        place of the keys under it."""
        entries: list[ObjectRow | str] = []
        high = prefix_end(prefix)
        with self._db.session() as connection:
            while len(entries) < count:
                wanted = count - len(entries)
                rows = _scan(connection, prefix, after, inclusive, high, wanted)
                for row in rows:
                    common = _delimited(row.key, prefix, delimiter)
                    if common is not None:
                        entries.append(common)
                        after, inclusive = prefix_end(common), True  # skip every key under it
                        break
                    entries.append(row)
                    after, inclusive = row.key, False
                else:
                    if len(rows) < wanted:
                        return entries
                if after is None:
                    return entries
        return entries

    # multipart uploads

    def create_upload(self, upload_id: str, upload: UploadRow) -> None:
        with self._db.session() as connection:
            connection.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?)", (upload_id, upload.key,
                               upload.http_metadata, upload.custom_metadata, upload.storage_class))

    def find_upload(self, upload_id: str, key: str) -> UploadRow | None:
        with self._db.session() as connection:
            return _upload(connection, upload_id, key)

    def commit_part(self, upload_id: str, key: str, part: PartRow, incoming: Path) -> bool:
        """Keep `incoming` as a part of the upload (replacing one of the same number); False: no such upload."""
        try:
            with self._db.write() as connection:
                if _upload(connection, upload_id, key) is None:
                    return False
                replaced = connection.execute("SELECT blob FROM parts WHERE upload_id = ? AND part_number = ?",
                                              (upload_id, part.part_number)).fetchone()
                os.replace(incoming, self.blobs / part.blob)
                connection.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
                                   (upload_id, part.part_number, part.blob, part.size, part.etag))
        except BaseException:
            unlink_files(self.blobs / part.blob)
            raise
        finally:
            unlink_files(incoming)
        if replaced is not None:
            unlink_files(self.blobs / replaced[0])
        return True

    def parts(self, upload_id: str) -> dict[int, PartRow]:
        with self._db.session() as connection:
            rows = connection.execute("SELECT part_number, blob, size, etag FROM parts WHERE upload_id = ?",
                                      (upload_id,)).fetchall()
        return {row[0]: PartRow(*row) for row in rows}

    def join_parts(self, parts: list[PartRow], incoming: Path) -> None:
        """Copy the parts, in order, into one incoming file, a chunk at a time."""
        with open(incoming, "wb") as out:
            for part in parts:
                with open(self.blobs / part.blob, "rb") as source:
                    while chunk := source.read(WRITE_BATCH_BYTES):
                        out.write(chunk)

    def finish_upload(self, upload_id: str, key: str, row: ObjectRow | None = None, incoming: Path | None = None) -> bool:
        """Drop the upload and its parts, first storing `row` (completion) unless it is None (abort)."""
        try:
            with self._db.write() as connection:
                if _upload(connection, upload_id, key) is None:
                    return False
                blobs = [blob for (blob,) in connection.execute("SELECT blob FROM parts WHERE upload_id = ?",
                                                                (upload_id,))]
                connection.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
                connection.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
                current = _row(connection, row.key) if row else None
                if row is not None and incoming is not None:
                    os.replace(incoming, self.blobs / row.blob)
                    connection.execute(f"INSERT OR REPLACE INTO objects ({_ROW_COLUMNS}) VALUES "
                                       "(?,?,?,?,?,?,?,?,?,?)", (row.key, row.blob, row.version, row.size, row.etag,
                                                                 row.uploaded_ms, row.http_metadata,
                                                                 row.custom_metadata, row.checksums, row.storage_class))
        except BaseException:
            if row is not None:
                unlink_files(self.blobs / row.blob)
            raise
        finally:
            if incoming is not None:
                unlink_files(incoming)
        unlink_files(*(self.blobs / blob for blob in blobs))
        if current is not None:
            unlink_files(self.blobs / current.blob)
        return True


def _row(connection: sqlite3.Connection, key: str) -> ObjectRow | None:
    found = connection.execute(f"SELECT {_ROW_COLUMNS} FROM objects WHERE key = ?", (key,)).fetchone()
    return None if found is None else ObjectRow(*found)


def _upload(connection: sqlite3.Connection, upload_id: str, key: str) -> UploadRow | None:
    found = connection.execute("SELECT key, http_metadata, custom_metadata, storage_class FROM uploads "
                               "WHERE upload_id = ?", (upload_id,)).fetchone()
    return None if found is None or found[0] != key else UploadRow(*found)


def _scan(connection: sqlite3.Connection, prefix: str, after: str | None, inclusive: bool, high: str | None,
          count: int) -> list[ObjectRow]:
    if after is None or after < prefix:
        where, params = ["key >= ?"], [prefix]
    else:
        where, params = ["key >= ?" if inclusive else "key > ?"], [after]
    if high is not None:
        where.append("key < ?")
        params.append(high)
    rows = connection.execute(f"SELECT {_ROW_COLUMNS} FROM objects WHERE {' AND '.join(where)} ORDER BY key "
                              "LIMIT ?", (*params, count)).fetchall()
    return [ObjectRow(*row) for row in rows]


def _delimited(key: str, prefix: str, delimiter: str | None) -> str | None:
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return None if at < 0 else key[:at + len(delimiter)]


def unlink_files(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
