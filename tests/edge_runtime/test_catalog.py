"""Tests for edge_runtime.catalog: the built-in PoP locations and distance maths."""

from __future__ import annotations

import dataclasses
import zoneinfo

import pytest

from edge_runtime.catalog import (
    CATALOG,
    DEFAULT_POPS,
    Location,
    UnknownLocationError,
    get_location,
    great_circle_km,
    location_for_country,
)

REQUIRED_CODES = (
    "DFW SFO LAX SJC SEA ORD IAD EWR ATL MIA YYZ GRU EZE SCL BOG LHR MAN AMS FRA CDG MAD MXP ARN "
    "WAW VIE ZRH DUB IST DXB BOM DEL SIN HKG NRT KIX ICN SYD MEL AKL JNB CPT NBO LOS CAI"
).split()


def test_catalog_has_required_codes_and_at_least_40_entries() -> None:
    assert len(CATALOG) >= 40
    assert [code for code in REQUIRED_CODES if code not in CATALOG] == []


@pytest.mark.parametrize("code", sorted(CATALOG))
def test_entry_fields_are_valid(code: str) -> None:
    location = CATALOG[code]
    assert location.iata == code and len(code) == 3 and code.isalpha() and code.isupper()
    assert len(location.country) == 2 and location.country.isupper()
    assert -90.0 <= location.latitude <= 90.0
    assert -180.0 <= location.longitude <= 180.0
    assert location.continent in {"EU", "NA", "SA", "AS", "AF", "OC"}
    assert location.city and location.region and location.region_code
    zoneinfo.ZoneInfo(location.timezone)  # raises for a name that is not IANA
    if location.country == "US":
        assert location.postal_code and location.metro_code.isdigit()
    else:
        assert location.metro_code == ""


def test_catalog_covers_every_continent() -> None:
    assert {location.continent for location in CATALOG.values()} == {"EU", "NA", "SA", "AS", "AF", "OC"}


@pytest.mark.parametrize(
    ("code", "city", "country", "latitude", "longitude", "timezone", "region_code"),
    [
        ("DFW", "Dallas", "US", 32.7767, -96.7970, "America/Chicago", "TX"),
        ("LHR", "London", "GB", 51.5074, -0.1278, "Europe/London", "ENG"),
        ("NRT", "Tokyo", "JP", 35.6762, 139.6503, "Asia/Tokyo", "13"),
        ("SYD", "Sydney", "AU", -33.8688, 151.2093, "Australia/Sydney", "NSW"),
        ("GRU", "São Paulo", "BR", -23.5505, -46.6333, "America/Sao_Paulo", "SP"),
    ],
)
def test_known_entries(
    code: str, city: str, country: str, latitude: float, longitude: float, timezone: str, region_code: str
) -> None:
    location = CATALOG[code]
    assert (location.city, location.country, location.timezone, location.region_code) == (
        city, country, timezone, region_code,
    )
    assert location.latitude == pytest.approx(latitude, abs=1e-4)
    assert location.longitude == pytest.approx(longitude, abs=1e-4)


def test_lhr_to_jfk_distance() -> None:
    # Heathrow (51.4700, -0.4543) to JFK (40.6413, -73.7781) is about 5,540 km.
    assert great_circle_km(51.4700, -0.4543, 40.6413, -73.7781) == pytest.approx(5540, rel=0.01)


def test_distance_is_symmetric_and_zero_on_the_spot() -> None:
    assert great_circle_km(10.0, 20.0, 10.0, 20.0) == 0.0
    assert great_circle_km(1.0, 2.0, -30.0, 100.0) == pytest.approx(great_circle_km(-30.0, 100.0, 1.0, 2.0))
    # Antipodes are half the circumference apart.
    assert great_circle_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(3.141592653589793 * 6371.0088)


def test_get_location_is_case_insensitive() -> None:
    assert get_location("lhr") is CATALOG["LHR"]
    assert get_location("Fra") is CATALOG["FRA"]


def test_get_location_unknown_code_lists_valid_codes() -> None:
    with pytest.raises(UnknownLocationError) as caught:
        get_location("ZZZ")
    assert isinstance(caught.value, KeyError)
    message = str(caught.value)
    assert "'ZZZ'" in message and "DFW" in message and "LHR" in message
    assert not message.startswith('"')  # not KeyError's repr-quoting


def test_location_for_country_gives_main_city() -> None:
    assert location_for_country("GB") is CATALOG["LHR"]
    assert location_for_country("us") is CATALOG["DFW"]
    assert location_for_country("DE") is CATALOG["FRA"]
    assert location_for_country("JP") is CATALOG["NRT"]
    assert location_for_country("XX") is None


def test_is_eu() -> None:
    assert CATALOG["FRA"].is_eu and CATALOG["DUB"].is_eu and CATALOG["WAW"].is_eu
    assert not CATALOG["LHR"].is_eu and not CATALOG["ZRH"].is_eu and not CATALOG["DFW"].is_eu


def test_default_pops_are_worldwide_catalog_codes() -> None:
    assert DEFAULT_POPS == ("DFW", "SFO", "LHR", "FRA", "SIN", "NRT")
    assert all(code in CATALOG for code in DEFAULT_POPS)


def test_location_is_frozen_and_validated() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CATALOG["LHR"].city = "Paris"  # type: ignore[misc]
    with pytest.raises(ValueError, match="continent"):
        Location("ABC", "X", "GB", 0.0, 0.0, "UTC", "XX", "R", "R")
    with pytest.raises(ValueError, match="out of range"):
        Location("ABC", "X", "GB", 91.0, 0.0, "UTC", "EU", "R", "R")
    with pytest.raises(ValueError, match="iata"):
        Location("abc", "X", "GB", 0.0, 0.0, "UTC", "EU", "R", "R")
