"""Where is the client? Turns request headers, the client IP and settings into a ClientLocation.

The result feeds the geo fields of `request.cf` and nearest-PoP routing.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edge_runtime.catalog import CATALOG, Location, great_circle_km, location_for_country

LOCATION_HEADER = "edgewise-client-location"
BLOB_HEADER = "mf-cf-blob"
COUNTRY_HEADER = "cf-ipcountry"
ALLOWED_FORMATS = (
    '"LAT,LON" in degrees (e.g. "51.5074,-0.1278"), a catalog IATA code (e.g. "LHR") '
    'or a 2-letter country code with a catalog city (e.g. "GB")'
)


class LocationError(ValueError):
    """A location header or setting that cannot be understood."""


@dataclass(frozen=True)
class ClientLocation:
    """The client's position and the `request.cf` geo fields that go with it."""

    latitude: float
    longitude: float
    city: str | None
    country: str | None
    continent: str | None
    region: str | None
    region_code: str | None
    timezone: str | None
    postal_code: str | None
    metro_code: str | None
    source: str  # "header" | "blob" | "country" | "ip" | "default"


# Miniflare's fallback `request.cf` geo fields, so local behaviour matches `wrangler dev`.
DEV_DEFAULT = ClientLocation(
    latitude=30.27130, longitude=-97.74260, city="Austin", country="US", continent="NA",
    region="Texas", region_code="TX", timezone="America/Chicago", postal_code="78701",
    metro_code="635", source="default",
)


@functools.lru_cache(maxsize=1024)  # frozen results: share one per (location, source)
def _from_catalog(location: Location, source: str) -> ClientLocation:
    return ClientLocation(
        latitude=location.latitude, longitude=location.longitude, city=location.city,
        country=location.country, continent=location.continent, region=location.region,
        region_code=location.region_code, timezone=location.timezone,
        postal_code=location.postal_code or None, metro_code=location.metro_code or None,
        source=source,
    )


def nearest_first(latitude: float, longitude: float, candidates: Iterable[Location]) -> list[Location]:
    """Candidates by great-circle distance from the point, nearest first, ties by IATA code."""
    def distance_then_code(location: Location) -> tuple[float, str]:
        km = great_circle_km(latitude, longitude, location.latitude, location.longitude)
        return km, location.iata

    return sorted(candidates, key=distance_then_code)


@functools.lru_cache(maxsize=1024)
def _at_coordinates(latitude: float, longitude: float, source: str) -> ClientLocation:
    # Cached: a client that sends coordinates usually sends the same ones on every request.
    nearest = nearest_first(latitude, longitude, CATALOG.values())[0]
    return replace(_from_catalog(nearest, source), latitude=latitude, longitude=longitude)


def _coordinates(latitude: Any, longitude: Any, what: str) -> tuple[float, float]:
    """Range-checked degrees from floats, ints or numeric strings."""
    try:
        if isinstance(latitude, bool) or isinstance(longitude, bool):
            raise TypeError("booleans are not coordinates")
        lat, lon = float(latitude), float(longitude)
    except (TypeError, ValueError):
        raise LocationError(f"{what}: coordinates {latitude!r},{longitude!r} are not numbers") from None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise LocationError(f"{what}: latitude must be in [-90, 90] and longitude in [-180, 180], "
                            f"got {lat},{lon}")
    return lat, lon


def parse_location(spec: str, source: str) -> ClientLocation:
    """A location from "LAT,LON", an IATA code or a country code; geo fields from the catalog."""
    text = spec.strip()
    if "," in text:
        latitude, _, longitude = text.partition(",")
        return _at_coordinates(*_coordinates(latitude, longitude, f"location {spec!r}"), source)
    if len(text) == 3 and text.upper() in CATALOG:
        return _from_catalog(CATALOG[text.upper()], source)
    main_city = location_for_country(text) if len(text) == 2 else None
    if main_city is not None:
        return _from_catalog(main_city, source)
    raise LocationError(f"unknown location {spec!r}: expected {ALLOWED_FORMATS}")


def _parse_setting(spec: str, source: str, setting: str) -> ClientLocation:
    try:
        return parse_location(spec, source)
    except LocationError as error:
        raise LocationError(f"{setting}: {error}") from None


# mf-cf-blob keys that override the fields derived from the blob's position.
_BLOB_FIELDS = {
    "city": "city", "country": "country", "continent": "continent", "region": "region",
    "regionCode": "region_code", "timezone": "timezone", "postalCode": "postal_code",
    "metroCode": "metro_code",
}


def _blob_position(blob: Mapping[str, Any], what: str) -> ClientLocation | None:
    has_latitude, has_longitude = "latitude" in blob, "longitude" in blob
    if has_latitude != has_longitude:
        raise LocationError(f"{what}: latitude and longitude must be given together")
    if has_latitude:
        return _at_coordinates(*_coordinates(blob["latitude"], blob["longitude"], what), "blob")
    colo = blob.get("colo")
    if isinstance(colo, str) and colo.upper() in CATALOG:
        return _from_catalog(CATALOG[colo.upper()], "blob")
    country = blob.get("country")
    main_city = location_for_country(country) if isinstance(country, str) else None
    return _from_catalog(main_city, "blob") if main_city is not None else None


def _locate_blob(raw: str) -> ClientLocation | None:
    """miniflare's `request.cf` override; None when it names no position we can use."""
    what = f"header {BLOB_HEADER!r}"
    try:
        blob = json.loads(raw)
    except json.JSONDecodeError as error:
        raise LocationError(f"{what}: not valid JSON ({error}); expected a JSON object") from None
    if not isinstance(blob, dict):
        raise LocationError(f"{what}: expected a JSON object, got {type(blob).__name__}")
    position = _blob_position(blob, what)
    if position is None:
        return None
    overrides = {field: str(blob[key]) for key, field in _BLOB_FIELDS.items() if blob.get(key) is not None}
    return replace(position, **overrides) if overrides else position


@dataclass(frozen=True)
class _PrefixLevel:
    """All table networks of one prefix length: masked address -> location."""

    mask: int
    by_network: Mapping[int, ClientLocation]


_NetworksByLength = dict[tuple[int, int], dict[int, ClientLocation]]  # (ip version, prefix length) -> networks


class _PrefixTable:
    """Longest-prefix match over CIDR networks, one dict probe per distinct prefix length."""

    def __init__(self, entries: Sequence[tuple[str, str]]) -> None:
        by_length: _NetworksByLength = {}
        for prefix, spec in entries:
            network = self._parse_network(prefix, spec)
            location = _parse_setting(spec, "ip", f"ip table entry ({prefix!r}, {spec!r})")
            networks = by_length.setdefault((network.version, network.prefixlen), {})
            if int(network.network_address) in networks:
                raise LocationError(f"ip table entry ({prefix!r}, {spec!r}): duplicate prefix {network}")
            networks[int(network.network_address)] = location
        self._levels: dict[int, tuple[_PrefixLevel, ...]] = {
            version: self._levels_of(version, by_length) for version in (4, 6)
        }

    @staticmethod
    def _parse_network(prefix: str, spec: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(prefix.strip())
        except ValueError as error:
            raise LocationError(
                f"ip table entry ({prefix!r}, {spec!r}): {error}; expected a CIDR prefix "
                'such as "203.0.113.0/24" or "2001:db8::/32" with no host bits set'
            ) from None

    @staticmethod
    def _levels_of(version: int, by_length: _NetworksByLength) -> tuple[_PrefixLevel, ...]:
        width = 32 if version == 4 else 128
        lengths = sorted((length for v, length in by_length if v == version), reverse=True)
        return tuple(
            _PrefixLevel(mask=((1 << length) - 1) << (width - length), by_network=by_length[(version, length)])
            for length in lengths
        )

    def __bool__(self) -> bool:
        return any(self._levels.values())

    def match(self, client_ip: str) -> ClientLocation | None:
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return None  # not an address (e.g. a unix socket peer): nothing to match
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d
        value = int(address)
        for level in self._levels[address.version]:
            location = level.by_network.get(value & level.mask)
            if location is not None:
                return location
        return None


class ClientLocator:
    """Picks the client's location: explicit header, miniflare blob, country, IP table, default."""

    def __init__(self, ip_table: Sequence[tuple[str, str]] = (), default: str | None = None) -> None:
        self._ip_table = _PrefixTable(ip_table)
        self._has_ip_table = bool(self._ip_table)
        self._default = DEV_DEFAULT if default is None else _parse_setting(default, "default", "setting 'default'")

    @property
    def default(self) -> ClientLocation:
        return self._default

    @property
    def has_ip_table(self) -> bool:
        return self._has_ip_table

    def locate(self, headers: Mapping[str, str], client_ip: str | None) -> ClientLocation:
        """The client's location; `headers` must have lower-case keys."""
        explicit = headers.get(LOCATION_HEADER)
        if explicit is not None:
            return _parse_setting(explicit, "header", f"header {LOCATION_HEADER!r}")
        blob = headers.get(BLOB_HEADER)
        if blob is not None:
            located = _locate_blob(blob)
            if located is not None:
                return located
        country = headers.get(COUNTRY_HEADER)
        if country is not None:
            main_city = location_for_country(country.strip())
            if main_city is not None:
                return _from_catalog(main_city, "country")
        if self._has_ip_table and client_ip:
            located = self._ip_table.match(client_ip)
            if located is not None:
                return located
        return self._default
