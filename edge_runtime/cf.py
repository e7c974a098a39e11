"""``request.cf`` and the Cloudflare request headers a PoP adds, built from the PoP and the client location."""

from __future__ import annotations

import json
from random import getrandbits as _random_bits
from collections.abc import Mapping
from typing import Any

from edgewise_sdk.workers import JsDict, to_jsdict

from .catalog import EU_COUNTRIES, Location
from .geo import ClientLocation

# miniflare's fallback values for what a local run cannot know (TLS, bot score, ASN).
_CONNECTION_FIELDS: Mapping[str, Any] = {
    "asn": 395747,
    "asOrganization": "",
    "clientTcpRtt": 0,
    "requestPriority": "weight=192;exclusive=0",
    "tlsCipher": "AEAD-AES128-GCM-SHA256",
    "tlsVersion": "TLSv1.3",
    "edgeRequestKeepAliveStatus": 1,
    "tlsClientAuth": {
        "certPresented": "0", "certVerified": "NONE", "certRevoked": "0", "certIssuerDN": "",
        "certSubjectDN": "", "certIssuerDNRFC2253": "", "certSubjectDNRFC2253": "", "certIssuerDNLegacy": "",
        "certSubjectDNLegacy": "", "certSerial": "", "certIssuerSerial": "", "certSKI": "", "certIssuerSKI": "",
        "certFingerprintSHA1": "", "certFingerprintSHA256": "", "certNotBefore": "", "certNotAfter": "",
    },
    "botManagement": {
        "corporateProxy": False, "verifiedBot": False, "ja3Hash": "25b4882c2bcb50cd6b469ff28c596742",
        "staticResource": False, "detectionIds": [], "score": 99,
    },
    "clientTrustScore": 99,
}


def new_ray_id(colo: str) -> str:
    """``CF-Ray``: 16 lower-case hex digits, a dash, the serving colo (``230b030023ae2822-SJC``)."""
    return f"{_random_bits(64).to_bytes(8, 'big').hex()}-{colo}"


def base_cf(pop: Location, client: ClientLocation, overrides: Mapping[str, Any]) -> JsDict:
    """The fields fixed for one (PoP, client location) pair; cached by the PoP."""
    cf: dict[str, Any] = dict(_CONNECTION_FIELDS)
    cf.update({
        "colo": pop.iata,
        "country": client.country,
        "city": client.city,
        "continent": client.continent,
        "latitude": f"{client.latitude:.5f}",
        "longitude": f"{client.longitude:.5f}",
        "postalCode": client.postal_code,
        "metroCode": client.metro_code,
        "region": client.region,
        "regionCode": client.region_code,
        "timezone": client.timezone,
    })
    if client.country in EU_COUNTRIES:
        cf["isEUCountry"] = "1"
    cf.update(overrides)
    return to_jsdict(cf)


def request_cf(base: Mapping[str, Any], accept_encoding: str, http_version: str, rtt_ms: float,
               blob: str | None) -> JsDict:
    """One request's ``cf``: the cached base plus per-request fields; an ``MF-CF-Blob`` header wins."""
    # Shallow copy: the nested tables (tlsClientAuth, botManagement) are shared read-only data.
    cf = JsDict(base)
    cf["clientAcceptEncoding"] = accept_encoding
    cf["httpProtocol"] = f"HTTP/{http_version}"
    cf["clientTcpRtt"] = round(rtt_ms)
    if blob:
        # The location was already validated from the same header by the locator.
        cf.update(to_jsdict(json.loads(blob)))
    return cf
