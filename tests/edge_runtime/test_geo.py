"""Tests for edge_runtime.geo: parsing location specs, locating clients, nearest PoPs."""

from __future__ import annotations

import json

import pytest

from edge_runtime.catalog import CATALOG, DEFAULT_POPS, Location
from edge_runtime.geo import DEV_DEFAULT, ClientLocator, LocationError, nearest_first, parse_location

DEFAULT_POP_LOCATIONS = [CATALOG[code] for code in DEFAULT_POPS]


def codes(locations: list[Location]) -> list[str]:
    return [location.iata for location in locations]


# --- nearest_first -------------------------------------------------------------------------


def test_london_is_nearest_lhr_then_fra() -> None:
    assert codes(nearest_first(51.5074, -0.1278, DEFAULT_POP_LOCATIONS))[:2] == ["LHR", "FRA"]


def test_austin_is_nearest_dfw() -> None:
    assert codes(nearest_first(30.2713, -97.7426, DEFAULT_POP_LOCATIONS))[:2] == ["DFW", "SFO"]


def test_tokyo_is_nearest_nrt() -> None:
    assert codes(nearest_first(35.6762, 139.6503, DEFAULT_POP_LOCATIONS))[:2] == ["NRT", "SIN"]


def test_nearest_first_orders_all_candidates() -> None:
    ordered = codes(nearest_first(51.5074, -0.1278, DEFAULT_POP_LOCATIONS))
    assert ordered == ["LHR", "FRA", "DFW", "SFO", "NRT", "SIN"]


def test_nearest_first_breaks_ties_by_code() -> None:
    twin_b = Location("BBB", "B", "GB", 10.0, 10.0, "UTC", "EU", "R", "R")
    twin_a = Location("AAA", "A", "GB", 10.0, 10.0, "UTC", "EU", "R", "R")
    assert codes(nearest_first(0.0, 0.0, [twin_b, twin_a])) == ["AAA", "BBB"]
    assert nearest_first(0.0, 0.0, []) == []


# --- parse_location ------------------------------------------------------------------------


def test_dev_default_is_miniflares_austin() -> None:
    assert (DEV_DEFAULT.latitude, DEV_DEFAULT.longitude) == (30.27130, -97.74260)
    assert (DEV_DEFAULT.city, DEV_DEFAULT.country, DEV_DEFAULT.continent) == ("Austin", "US", "NA")
    assert (DEV_DEFAULT.region, DEV_DEFAULT.region_code) == ("Texas", "TX")
    assert (DEV_DEFAULT.timezone, DEV_DEFAULT.postal_code, DEV_DEFAULT.metro_code) == (
        "America/Chicago", "78701", "635",
    )
    assert DEV_DEFAULT.source == "default"


def test_parse_coordinates_keeps_them_and_takes_fields_from_nearest_city() -> None:
    # Paris-Orly airport: nearest catalog city is Paris.
    location = parse_location(" 48.7262, 2.3652 ", "header")
    assert (location.latitude, location.longitude) == (48.7262, 2.3652)
    assert (location.city, location.country, location.timezone, location.continent) == (
        "Paris", "FR", "Europe/Paris", "EU",
    )
    assert location.region_code == "IDF" and location.source == "header"


def test_parse_iata_code_uses_catalog_coordinates() -> None:
    location = parse_location("lhr", "header")
    assert (location.latitude, location.longitude, location.city) == (51.5074, -0.1278, "London")
    assert (location.postal_code, location.metro_code) == (None, None)


def test_parse_country_code_uses_main_city() -> None:
    location = parse_location("JP", "default")
    assert (location.city, location.latitude, location.source) == ("Tokyo", 35.6762, "default")
    us = parse_location("US", "header")
    assert (us.city, us.postal_code, us.metro_code) == ("Dallas", "75201", "623")


@pytest.mark.parametrize("spec", ["91,0", "0,181", "abc,1", "1,2,3", "nan,0", "XX", "ZZZ", "London", ""])
def test_parse_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(LocationError):
        parse_location(spec, "header")


# --- ClientLocator.locate: precedence ------------------------------------------------------


ALL_SOURCES = {
    "edgewise-client-location": "34.7,135.4",
    "mf-cf-blob": json.dumps({"colo": "SYD"}),
    "cf-ipcountry": "GB",
}


@pytest.fixture
def locator() -> ClientLocator:
    return ClientLocator(ip_table=[("203.0.113.0/24", "SIN")], default="FRA")


def test_header_wins_over_everything(locator: ClientLocator) -> None:
    located = locator.locate(ALL_SOURCES, "203.0.113.9")
    assert (located.source, located.latitude, located.longitude, located.city) == ("header", 34.7, 135.4, "Osaka")


def test_blob_wins_over_country_and_ip(locator: ClientLocator) -> None:
    headers = {k: v for k, v in ALL_SOURCES.items() if k != "edgewise-client-location"}
    located = locator.locate(headers, "203.0.113.9")
    assert (located.source, located.city, located.latitude) == ("blob", "Sydney", -33.8688)


def test_country_wins_over_ip(locator: ClientLocator) -> None:
    located = locator.locate({"cf-ipcountry": "GB"}, "203.0.113.9")
    assert (located.source, located.city, located.country) == ("country", "London", "GB")


def test_ip_wins_over_default(locator: ClientLocator) -> None:
    located = locator.locate({}, "203.0.113.9")
    assert (located.source, located.city) == ("ip", "Singapore")


def test_default_setting_is_last(locator: ClientLocator) -> None:
    located = locator.locate({}, "198.51.100.1")
    assert (located.source, located.city) == ("default", "Frankfurt")
    assert locator.locate({}, None).city == "Frankfurt"


def test_no_settings_gives_dev_default() -> None:
    assert ClientLocator().locate({}, "127.0.0.1") is DEV_DEFAULT


def test_unknown_country_falls_through(locator: ClientLocator) -> None:
    for code in ("XX", "T1"):
        located = locator.locate({"cf-ipcountry": code}, "203.0.113.9")
        assert (located.source, located.city) == ("ip", "Singapore")


# --- mf-cf-blob ----------------------------------------------------------------------------


def test_blob_coordinates_as_strings_or_numbers() -> None:
    locator = ClientLocator()
    as_strings = locator.locate({"mf-cf-blob": '{"latitude": "51.5", "longitude": "-0.12"}'}, None)
    as_numbers = locator.locate({"mf-cf-blob": '{"latitude": 51.5, "longitude": -0.12, "colo": "SYD"}'}, None)
    for located in (as_strings, as_numbers):
        assert (located.source, located.latitude, located.longitude, located.city) == ("blob", 51.5, -0.12, "London")


def test_blob_colo_then_country() -> None:
    locator = ClientLocator()
    assert locator.locate({"mf-cf-blob": '{"colo": "kix"}'}, None).city == "Osaka"
    # An unknown colo falls back to the blob's country.
    located = locator.locate({"mf-cf-blob": '{"colo": "QQQ", "country": "DE"}'}, None)
    assert (located.source, located.city) == ("blob", "Frankfurt")


def test_blob_explicit_fields_override_derived_ones() -> None:
    blob = json.dumps({"colo": "DFW", "city": "Austin", "postalCode": "78701", "metroCode": 635})
    located = ClientLocator().locate({"mf-cf-blob": blob}, None)
    assert (located.city, located.postal_code, located.metro_code, located.region_code) == (
        "Austin", "78701", "635", "TX",
    )


def test_blob_without_position_falls_through() -> None:
    headers = {"mf-cf-blob": '{"asn": 13335, "colo": "QQQ"}', "cf-ipcountry": "AU"}
    located = ClientLocator().locate(headers, None)
    assert (located.source, located.city) == ("country", "Sydney")


@pytest.mark.parametrize(
    "blob",
    ["{not json", "[1, 2]", '{"latitude": 10}', '{"latitude": "x", "longitude": 1}', '{"latitude": 95, "longitude": 1}'],
)
def test_bad_blob_is_an_error_naming_the_header(blob: str) -> None:
    with pytest.raises(LocationError, match="mf-cf-blob"):
        ClientLocator().locate({"mf-cf-blob": blob}, None)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["100,0", "Londres", "QQQ"])
def test_bad_location_header_names_header_and_formats(value: str) -> None:
    with pytest.raises(LocationError, match="edgewise-client-location") as caught:
        ClientLocator().locate({"edgewise-client-location": value}, None)
    assert isinstance(caught.value, ValueError)
    if value != "100,0":
        assert "LAT,LON" in str(caught.value)


def test_bad_default_setting_is_rejected_at_construction() -> None:
    with pytest.raises(LocationError, match="default"):
        ClientLocator(default="Atlantis")


@pytest.mark.parametrize(
    "entry",
    [("203.0.113.0/33", "LHR"), ("not-a-net", "LHR"), ("203.0.113.1/24", "LHR"), ("10.0.0.0/8", "Atlantis")],
)
def test_bad_ip_table_entry_is_named(entry: tuple[str, str]) -> None:
    with pytest.raises(LocationError) as caught:
        ClientLocator(ip_table=[("192.0.2.0/24", "LHR"), entry])
    assert repr(entry[0]) in str(caught.value)


def test_duplicate_ip_prefix_is_rejected() -> None:
    with pytest.raises(LocationError, match="duplicate"):
        ClientLocator(ip_table=[("10.0.0.0/8", "LHR"), ("10.0.0.0/8", "FRA")])


# --- ip table ------------------------------------------------------------------------------


IP_TABLE = [
    ("10.0.0.0/8", "LHR"),
    ("10.1.0.0/16", "FRA"),
    ("10.1.2.0/24", "NRT"),
    ("0.0.0.0/0", "SYD"),
    ("2001:db8::/32", "SIN"),
    ("2001:db8:abcd::/48", "GB"),
    ("2001:db8:abcd:12::/64", "-33.9249,18.4241"),
]


@pytest.mark.parametrize(
    ("client_ip", "city"),
    [
        ("10.9.9.9", "London"),
        ("10.1.9.9", "Frankfurt"),
        ("10.1.2.3", "Tokyo"),
        ("192.0.2.1", "Sydney"),  # only the catch-all matches
        ("::ffff:10.1.2.3", "Tokyo"),  # IPv4-mapped IPv6 is matched as IPv4
        ("2001:db8:1::1", "Singapore"),
        ("2001:db8:abcd:1::1", "London"),
        ("2001:db8:abcd:12::7", "Cape Town"),
    ],
)
def test_longest_prefix_match(client_ip: str, city: str) -> None:
    located = ClientLocator(ip_table=IP_TABLE).locate({}, client_ip)
    assert (located.source, located.city) == ("ip", city)


def test_ip_table_misses_fall_to_default() -> None:
    locator = ClientLocator(ip_table=[("10.0.0.0/8", "LHR"), ("2001:db8::/32", "SIN")])
    assert locator.locate({}, "2001:db9::1").source == "default"
    assert locator.locate({}, "11.0.0.1").source == "default"
    assert locator.locate({}, "not-an-ip").source == "default"
    assert locator.locate({}, None) is DEV_DEFAULT


def test_ip_table_coordinates_entry_keeps_coordinates() -> None:
    located = ClientLocator(ip_table=IP_TABLE).locate({}, "2001:db8:abcd:12::7")
    assert (located.latitude, located.longitude, located.country) == (-33.9249, 18.4241, "ZA")
