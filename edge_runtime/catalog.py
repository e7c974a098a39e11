"""The built-in catalog of real Cloudflare PoP locations, keyed by IATA colo code.

Every PoP of the emulated edge and every geolocated client is placed at one of these
locations. Coordinates are city centres (4 decimals); regions follow ISO 3166-2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
CONTINENTS = frozenset({"EU", "NA", "SA", "AS", "AF", "OC"})
EU_COUNTRIES = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
    "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
})


class UnknownLocationError(KeyError):
    """An IATA code that is not in the catalog."""

    def __init__(self, iata: str) -> None:
        examples = ", ".join(DEFAULT_POPS)
        self.message = (
            f"unknown location {iata!r}: expected a 3-letter IATA code from the catalog "
            f"({len(CATALOG)} known, e.g. {examples})"
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        # KeyError would repr() the message, wrapping it in quotes.
        return self.message


@dataclass(frozen=True)
class Location:
    """One city of the catalog, in the shape of Cloudflare's `request.cf` geo fields."""

    iata: str
    city: str
    country: str
    latitude: float
    longitude: float
    timezone: str
    continent: str
    region: str
    region_code: str
    postal_code: str = ""
    metro_code: str = ""

    def __post_init__(self) -> None:
        if len(self.iata) != 3 or not (self.iata.isalpha() and self.iata.isupper()):
            raise ValueError(f"iata must be 3 uppercase letters, got {self.iata!r}")
        if len(self.country) != 2 or not (self.country.isalpha() and self.country.isupper()):
            raise ValueError(f"{self.iata}: country must be ISO alpha-2, got {self.country!r}")
        if not (-90.0 <= self.latitude <= 90.0 and -180.0 <= self.longitude <= 180.0):
            raise ValueError(f"{self.iata}: coordinates out of range")
        if self.continent not in CONTINENTS:
            raise ValueError(f"{self.iata}: unknown continent {self.continent!r}")

    @property
    def is_eu(self) -> bool:
        return self.country in EU_COUNTRIES


_L = Location
# Order matters: the first entry of each country is its main city (see location_for_country).
# The US leads with DFW, the geographic centre of the US edge, so country-only US clients land
# mid-continent rather than on a coast.
_LOCATIONS: tuple[Location, ...] = (
    # North America
    _L("DFW", "Dallas", "US", 32.7767, -96.7970, "America/Chicago", "NA", "Texas", "TX", "75201", "623"),
    _L("SFO", "San Francisco", "US", 37.7749, -122.4194, "America/Los_Angeles", "NA", "California", "CA", "94102", "807"),
    _L("LAX", "Los Angeles", "US", 34.0522, -118.2437, "America/Los_Angeles", "NA", "California", "CA", "90012", "803"),
    _L("SJC", "San Jose", "US", 37.3382, -121.8863, "America/Los_Angeles", "NA", "California", "CA", "95113", "807"),
    _L("SEA", "Seattle", "US", 47.6062, -122.3321, "America/Los_Angeles", "NA", "Washington", "WA", "98101", "819"),
    _L("ORD", "Chicago", "US", 41.8781, -87.6298, "America/Chicago", "NA", "Illinois", "IL", "60602", "602"),
    _L("IAD", "Ashburn", "US", 39.0438, -77.4874, "America/New_York", "NA", "Virginia", "VA", "20147", "511"),
    _L("EWR", "Newark", "US", 40.7357, -74.1724, "America/New_York", "NA", "New Jersey", "NJ", "07102", "501"),
    _L("ATL", "Atlanta", "US", 33.7490, -84.3880, "America/New_York", "NA", "Georgia", "GA", "30303", "524"),
    _L("MIA", "Miami", "US", 25.7617, -80.1918, "America/New_York", "NA", "Florida", "FL", "33131", "528"),
    _L("DEN", "Denver", "US", 39.7392, -104.9903, "America/Denver", "NA", "Colorado", "CO", "80202", "751"),
    _L("BOS", "Boston", "US", 42.3601, -71.0589, "America/New_York", "NA", "Massachusetts", "MA", "02108", "506"),
    _L("PHX", "Phoenix", "US", 33.4484, -112.0740, "America/Phoenix", "NA", "Arizona", "AZ", "85004", "753"),
    _L("YYZ", "Toronto", "CA", 43.6532, -79.3832, "America/Toronto", "NA", "Ontario", "ON"),
    _L("YVR", "Vancouver", "CA", 49.2827, -123.1207, "America/Vancouver", "NA", "British Columbia", "BC"),
    _L("YUL", "Montreal", "CA", 45.5017, -73.5673, "America/Toronto", "NA", "Quebec", "QC"),
    _L("MEX", "Mexico City", "MX", 19.4326, -99.1332, "America/Mexico_City", "NA", "Ciudad de México", "CMX"),
    # South America
    _L("GRU", "São Paulo", "BR", -23.5505, -46.6333, "America/Sao_Paulo", "SA", "São Paulo", "SP"),
    _L("EZE", "Buenos Aires", "AR", -34.6037, -58.3816, "America/Argentina/Buenos_Aires", "SA", "Ciudad Autónoma de Buenos Aires", "C"),
    _L("SCL", "Santiago", "CL", -33.4489, -70.6693, "America/Santiago", "SA", "Región Metropolitana de Santiago", "RM"),
    _L("BOG", "Bogotá", "CO", 4.7110, -74.0721, "America/Bogota", "SA", "Bogotá D.C.", "DC"),
    _L("LIM", "Lima", "PE", -12.0464, -77.0428, "America/Lima", "SA", "Lima", "LMA"),
    # Europe
    _L("LHR", "London", "GB", 51.5074, -0.1278, "Europe/London", "EU", "England", "ENG"),
    _L("MAN", "Manchester", "GB", 53.4808, -2.2426, "Europe/London", "EU", "England", "ENG"),
    _L("EDI", "Edinburgh", "GB", 55.9533, -3.1883, "Europe/London", "EU", "Scotland", "SCT"),
    _L("AMS", "Amsterdam", "NL", 52.3676, 4.9041, "Europe/Amsterdam", "EU", "Noord-Holland", "NH"),
    _L("FRA", "Frankfurt", "DE", 50.1109, 8.6821, "Europe/Berlin", "EU", "Hessen", "HE"),
    _L("MUC", "Munich", "DE", 48.1351, 11.5820, "Europe/Berlin", "EU", "Bayern", "BY"),
    _L("HAM", "Hamburg", "DE", 53.5511, 9.9937, "Europe/Berlin", "EU", "Hamburg", "HH"),
    _L("CDG", "Paris", "FR", 48.8566, 2.3522, "Europe/Paris", "EU", "Île-de-France", "IDF"),
    _L("MRS", "Marseille", "FR", 43.2965, 5.3698, "Europe/Paris", "EU", "Provence-Alpes-Côte-d'Azur", "PAC"),
    _L("MAD", "Madrid", "ES", 40.4168, -3.7038, "Europe/Madrid", "EU", "Comunidad de Madrid", "MD"),
    _L("BCN", "Barcelona", "ES", 41.3874, 2.1686, "Europe/Madrid", "EU", "Catalunya", "CT"),
    _L("MXP", "Milan", "IT", 45.4642, 9.1900, "Europe/Rome", "EU", "Lombardia", "25"),
    _L("FCO", "Rome", "IT", 41.9028, 12.4964, "Europe/Rome", "EU", "Lazio", "62"),
    _L("ARN", "Stockholm", "SE", 59.3293, 18.0686, "Europe/Stockholm", "EU", "Stockholms län", "AB"),
    _L("WAW", "Warsaw", "PL", 52.2297, 21.0122, "Europe/Warsaw", "EU", "Mazowieckie", "14"),
    _L("VIE", "Vienna", "AT", 48.2082, 16.3738, "Europe/Vienna", "EU", "Wien", "9"),
    _L("ZRH", "Zurich", "CH", 47.3769, 8.5417, "Europe/Zurich", "EU", "Zürich", "ZH"),
    _L("GVA", "Geneva", "CH", 46.2044, 6.1432, "Europe/Zurich", "EU", "Genève", "GE"),
    _L("DUB", "Dublin", "IE", 53.3498, -6.2603, "Europe/Dublin", "EU", "Dublin", "D"),
    _L("CPH", "Copenhagen", "DK", 55.6761, 12.5683, "Europe/Copenhagen", "EU", "Hovedstaden", "84"),
    _L("OSL", "Oslo", "NO", 59.9139, 10.7522, "Europe/Oslo", "EU", "Oslo", "03"),
    _L("HEL", "Helsinki", "FI", 60.1699, 24.9384, "Europe/Helsinki", "EU", "Uusimaa", "18"),
    _L("BRU", "Brussels", "BE", 50.8503, 4.3517, "Europe/Brussels", "EU", "Brussels-Capital Region", "BRU"),
    _L("LIS", "Lisbon", "PT", 38.7223, -9.1393, "Europe/Lisbon", "EU", "Lisboa", "11"),
    _L("PRG", "Prague", "CZ", 50.0755, 14.4378, "Europe/Prague", "EU", "Praha", "10"),
    _L("ATH", "Athens", "GR", 37.9838, 23.7275, "Europe/Athens", "EU", "Attiki", "I"),
    _L("BUD", "Budapest", "HU", 47.4979, 19.0402, "Europe/Budapest", "EU", "Budapest", "BU"),
    _L("OTP", "Bucharest", "RO", 44.4268, 26.1025, "Europe/Bucharest", "EU", "București", "B"),
    # Cloudflare files Istanbul under Europe.
    _L("IST", "Istanbul", "TR", 41.0082, 28.9784, "Europe/Istanbul", "EU", "İstanbul", "34"),
    # Middle East and Asia
    _L("TLV", "Tel Aviv", "IL", 32.0853, 34.7818, "Asia/Jerusalem", "AS", "Tel Aviv", "TA"),
    _L("DXB", "Dubai", "AE", 25.2048, 55.2708, "Asia/Dubai", "AS", "Dubai", "DU"),
    _L("DOH", "Doha", "QA", 25.2854, 51.5310, "Asia/Qatar", "AS", "Ad Dawhah", "DA"),
    _L("BOM", "Mumbai", "IN", 19.0760, 72.8777, "Asia/Kolkata", "AS", "Maharashtra", "MH"),
    _L("DEL", "New Delhi", "IN", 28.6139, 77.2090, "Asia/Kolkata", "AS", "Delhi", "DL"),
    _L("MAA", "Chennai", "IN", 13.0827, 80.2707, "Asia/Kolkata", "AS", "Tamil Nadu", "TN"),
    _L("BLR", "Bangalore", "IN", 12.9716, 77.5946, "Asia/Kolkata", "AS", "Karnataka", "KA"),
    _L("SIN", "Singapore", "SG", 1.3521, 103.8198, "Asia/Singapore", "AS", "Central Singapore", "01"),
    _L("KUL", "Kuala Lumpur", "MY", 3.1390, 101.6869, "Asia/Kuala_Lumpur", "AS", "Wilayah Persekutuan Kuala Lumpur", "14"),
    _L("BKK", "Bangkok", "TH", 13.7563, 100.5018, "Asia/Bangkok", "AS", "Krung Thep Maha Nakhon", "10"),
    _L("CGK", "Jakarta", "ID", -6.2088, 106.8456, "Asia/Jakarta", "AS", "DKI Jakarta", "JK"),
    _L("MNL", "Manila", "PH", 14.5995, 120.9842, "Asia/Manila", "AS", "National Capital Region", "00"),
    _L("HKG", "Hong Kong", "HK", 22.3193, 114.1694, "Asia/Hong_Kong", "AS", "Hong Kong", "HK"),
    _L("TPE", "Taipei", "TW", 25.0330, 121.5654, "Asia/Taipei", "AS", "Taipei", "TPE"),
    _L("NRT", "Tokyo", "JP", 35.6762, 139.6503, "Asia/Tokyo", "AS", "Tokyo", "13"),
    _L("KIX", "Osaka", "JP", 34.6937, 135.5023, "Asia/Tokyo", "AS", "Osaka", "27"),
    _L("ICN", "Seoul", "KR", 37.5665, 126.9780, "Asia/Seoul", "AS", "Seoul", "11"),
    # Oceania
    _L("SYD", "Sydney", "AU", -33.8688, 151.2093, "Australia/Sydney", "OC", "New South Wales", "NSW"),
    _L("MEL", "Melbourne", "AU", -37.8136, 144.9631, "Australia/Melbourne", "OC", "Victoria", "VIC"),
    _L("BNE", "Brisbane", "AU", -27.4698, 153.0251, "Australia/Brisbane", "OC", "Queensland", "QLD"),
    _L("PER", "Perth", "AU", -31.9505, 115.8605, "Australia/Perth", "OC", "Western Australia", "WA"),
    _L("AKL", "Auckland", "NZ", -36.8485, 174.7633, "Pacific/Auckland", "OC", "Auckland", "AUK"),
    # Africa
    _L("JNB", "Johannesburg", "ZA", -26.2041, 28.0473, "Africa/Johannesburg", "AF", "Gauteng", "GP"),
    _L("CPT", "Cape Town", "ZA", -33.9249, 18.4241, "Africa/Johannesburg", "AF", "Western Cape", "WC"),
    _L("NBO", "Nairobi", "KE", -1.2921, 36.8219, "Africa/Nairobi", "AF", "Nairobi City", "30"),
    _L("LOS", "Lagos", "NG", 6.5244, 3.3792, "Africa/Lagos", "AF", "Lagos", "LA"),
    _L("ACC", "Accra", "GH", 5.6037, -0.1870, "Africa/Accra", "AF", "Greater Accra", "AA"),
    _L("CAI", "Cairo", "EG", 30.0444, 31.2357, "Africa/Cairo", "AF", "Al Qahirah", "C"),
    _L("CMN", "Casablanca", "MA", 33.5731, -7.5898, "Africa/Casablanca", "AF", "Casablanca-Settat", "06"),
)


def _index_by_iata(locations: tuple[Location, ...]) -> Mapping[str, Location]:
    by_iata: dict[str, Location] = {}
    for location in locations:
        if location.iata in by_iata:
            raise ValueError(f"duplicate catalog entry {location.iata}")
        by_iata[location.iata] = location
    return MappingProxyType(by_iata)


def _index_by_country(locations: tuple[Location, ...]) -> Mapping[str, Location]:
    by_country: dict[str, Location] = {}
    for location in locations:
        by_country.setdefault(location.country, location)  # first entry = main city
    return MappingProxyType(by_country)


CATALOG: Mapping[str, Location] = _index_by_iata(_LOCATIONS)
_MAIN_CITY_BY_COUNTRY: Mapping[str, Location] = _index_by_country(_LOCATIONS)
DEFAULT_POPS: tuple[str, ...] = ("DFW", "SFO", "LHR", "FRA", "SIN", "NRT")


def get_location(iata: str) -> Location:
    """The catalog entry for an IATA code, in any case."""
    location = CATALOG.get(iata.upper())
    if location is None:
        raise UnknownLocationError(iata)
    return location


def location_for_country(country: str) -> Location | None:
    """The main city of an ISO alpha-2 country, or None if the catalog has none there."""
    return _MAIN_CITY_BY_COUNTRY.get(country.upper())


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance between two points given in degrees."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    half_dphi = (phi2 - phi1) / 2
    half_dlambda = math.radians(lon2 - lon1) / 2
    a = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlambda) ** 2
    # min() guards asin against rounding just above 1 for antipodal points.
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))
