"""Eventual consistency between PoPs for KV, as on Cloudflare, when `[edgewise] kv_propagation_ms` is set.

Every PoP shares one `KvNamespace` and its SQLite file; this module gives each PoP a namespace over a
`PopKvView` of that store instead. A write through one PoP's view is stored at once and noted in the
namespace's `RecentWrites` with the entry it replaced; for the propagation delay, reads at any other
PoP see that previous entry (or none), while the writing PoP sees its own write.

`list` at another PoP hides a key first created there within the delay and shows the previous
expiration and metadata of a key overwritten there; a key deleted at another PoP drops out of `list`
at once (only `get` and `getWithMetadata` still see it until the delay has passed).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from .kv import KvNamespace
from .kv_store import KvStore

StoredEntry = tuple[bytes, int | None, str | None]  # (value, expiration, metadata JSON), as KvStore.entry


@dataclass(frozen=True)
class Write:
    """One write not yet seen by the other PoPs."""

    colo: str  # the PoP that made it
    written_at_s: float  # on the RecentWrites clock
    previous: StoredEntry | None  # what the other PoPs still see; None: no entry


class RecentWrites:
    """A namespace's writes younger than the delay: key -> the last Write to it."""

    def __init__(self, delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay_s = delay_s
        self._clock = clock
        self._writes: OrderedDict[str, Write] = OrderedDict()  # oldest first
        self.lock = threading.Lock()  # held across read-previous, write, record: writes to a key stay in order

    def record(self, key: str, colo: str, previous: StoredEntry | None) -> None:
        now = self._clock()
        self._forget_older_than(now - self.delay_s)
        self._writes.pop(key, None)
        self._writes[key] = Write(colo, now, previous)

    def hidden_from(self, key: str, colo: str) -> Write | None:
        """The write to `key` that `colo` must not see yet, if there is one."""
        write = self._writes.get(key)
        if write is None or write.colo == colo or self._clock() - write.written_at_s >= self.delay_s:
            return None
        return write

    def _forget_older_than(self, oldest_s: float) -> None:
        while self._writes:
            key, write = next(iter(self._writes.items()))
            if write.written_at_s >= oldest_s:
                return
            del self._writes[key]


class PopKvView:
    """One PoP's view of a shared KvStore (the same calls as KvStore), with other PoPs' recent writes held back."""

    def __init__(self, store: KvStore, colo: str, writes: RecentWrites) -> None:
        self._store = store
        self.colo = colo
        self._writes = writes

    @property
    def path(self) -> Path:
        return self._store.path

    def get(self, keys: list[str], now: float) -> dict[str, tuple[bytes, str | None]]:
        found = self._store.get(keys, now)
        for key in keys:
            write = self._writes.hidden_from(key, self.colo)
            if write is None:
                continue
            found.pop(key, None)
            if _is_live(write.previous, now):
                value, _, metadata = write.previous
                found[key] = (value, metadata)
        return found

    def put(self, key: str, value: bytes, expiration: int | None, metadata: str | None, now: float) -> None:
        with self._writes.lock:
            previous = self._store.entry(key, now)
            self._store.put(key, value, expiration, metadata, now)
            self._writes.record(key, self.colo, previous)

    def delete(self, key: str) -> None:
        with self._writes.lock:
            previous = self._store.entry(key, time.time())
            self._store.delete(key)
            self._writes.record(key, self.colo, previous)

    def list(self, prefix: str, after: str | None, count: int, now: float) -> list[tuple[str, int | None, str | None]]:
        listed = []
        for key, expiration, metadata in self._store.list(prefix, after, count, now):
            write = self._writes.hidden_from(key, self.colo)
            if write is None:
                listed.append((key, expiration, metadata))
            elif _is_live(write.previous, now):
                _, previous_expiration, previous_metadata = write.previous
                listed.append((key, previous_expiration, previous_metadata))
        return listed

    def close(self) -> None:
        """Nothing of its own to close: the shared store is closed with the shared namespace."""


class KvPropagation:
    """Per-PoP KV namespaces over the shared ones, one RecentWrites per shared namespace."""

    def __init__(self, delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay_s = delay_s
        self._clock = clock
        self._writes: WeakKeyDictionary[KvNamespace, RecentWrites] = WeakKeyDictionary()

    def for_pop(self, namespace: KvNamespace, colo: str) -> KvNamespace:
        """`namespace` as the PoP `colo` sees it."""
        writes = self._writes.get(namespace)
        if writes is None:
            writes = self._writes[namespace] = RecentWrites(self.delay_s, self._clock)
        return KvNamespace(namespace.name, PopKvView(namespace.store, colo, writes), namespace.clock)

    def for_pop_bindings(self, bindings: dict[str, Any], colo: str) -> dict[str, Any]:
        """`bindings` with each KV namespace replaced by the PoP's view of it."""
        return {name: self.for_pop(binding, colo) if isinstance(binding, KvNamespace) else binding
                for name, binding in bindings.items()}


def _is_live(entry: StoredEntry | None, now: float) -> bool:
    return entry is not None and (entry[1] is None or entry[1] > now)
