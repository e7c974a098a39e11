"""Where each Durable Object lives: the PoP of its first caller, or the PoP nearest its ``locationHint``.

The choice is made once and kept in a small SQLite index per namespace (``edgewise-objects.sqlite``
beside the objects' own databases), with the object's name and its pending alarm, so homes survive a
restart and alarms set before it can be found without opening every object's database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...catalog import Location
from ...geo import nearest_first

INDEX_FILE = "edgewise-objects.sqlite"

# Cloudflare's locationHint regions, each placed at one representative city of the region (the
# coordinates are ours: Cloudflare does not publish where a hint lands, only the region).
REGION_COORDINATES: dict[str, tuple[float, float]] = {
    "wnam": (37.77, -122.42),  # western North America: San Francisco
    "enam": (38.95, -77.45),  # eastern North America: Ashburn
    "sam": (-23.55, -46.63),  # South America: São Paulo
    "weur": (50.11, 8.68),  # western Europe: Frankfurt
    "eeur": (52.23, 21.01),  # eastern Europe: Warsaw
    "apac": (1.35, 103.82),  # Asia-Pacific: Singapore
    "oc": (-33.87, 151.21),  # Oceania: Sydney
    "afr": (-26.20, 28.05),  # Africa: Johannesburg
    "me": (25.20, 55.27),  # Middle East: Dubai
}


@dataclass(frozen=True)
class PlacedObject:
    object_id: str
    name: str | None
    home: str
    alarm_at_s: float | None


class Placement:
    """Picks homes among the edge's PoPs."""

    def __init__(self, locations: Sequence[Location]) -> None:
        self.locations = tuple(locations)

    def check_hint(self, hint: str) -> None:
        if hint not in REGION_COORDINATES:
            raise TypeError(f"Unknown locationHint {hint!r}: use one of {', '.join(REGION_COORDINATES)}")

    def home_for(self, caller_colo: str, hint: str | None) -> str:
        if hint is None:
            return caller_colo
        self.check_hint(hint)
        latitude, longitude = REGION_COORDINATES[hint]
        return nearest_first(latitude, longitude, self.locations)[0].iata


class PlacementIndex:
    """One namespace's objects: id -> (name, home PoP, alarm time); written as soon as a home is chosen."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / INDEX_FILE
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS objects (id TEXT PRIMARY KEY, name TEXT, home TEXT NOT NULL,"
                         " alarm_at REAL)")
        self._homes: dict[str, str] = dict(self._db.execute("SELECT id, home FROM objects"))

    def home(self, object_id: str) -> str | None:
        return self._homes.get(object_id)

    def place(self, object_id: str, name: str | None, home: str) -> None:
        self._db.execute("INSERT INTO objects (id, name, home) VALUES (?, ?, ?)"
                         " ON CONFLICT (id) DO UPDATE SET home = excluded.home", (object_id, name, home))
        self._homes[object_id] = home

    def set_alarm(self, object_id: str, alarm_at_s: float | None) -> None:
        self._db.execute("UPDATE objects SET alarm_at = ? WHERE id = ?", (alarm_at_s, object_id))

    def objects(self) -> Iterator[PlacedObject]:
        for row in self._db.execute("SELECT id, name, home, alarm_at FROM objects ORDER BY id").fetchall():
            yield PlacedObject(*row)

    def close(self) -> None:
        self._db.close()
