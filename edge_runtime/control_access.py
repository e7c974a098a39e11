"""Who may use the dev edge's control API (``/cdn-cgi/edgewise/``): same-origin or non-browser
clients, and for changes (``POST pops/<COLO>/up|down``) only those that show this run's token.

A web page the developer visits can send requests to localhost (a no-CORS ``fetch`` needs no
permission), so a browser request from another origin is refused; DNS rebinding makes an attacker's
page same-origin with a hostname it controls, so a browser's own origin counts only on a loopback
name or an IP literal. curl, scripts and ``edgewise tail`` send no ``Origin`` and pass.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

TOKEN_HEADER = "edgewise-control-token"
# Set, it is the control token instead of a fresh one: scripts that drive a dev run choose it up front.
TOKEN_ENV = "EDGEWISE_CONTROL_TOKEN"
_BROWSER_SAME_ORIGIN = ("same-origin", "none")  # Sec-Fetch-Site: "none" is a typed URL or a bookmark


def new_control_token() -> str:
    return os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)


def cross_origin_refusal(headers: Mapping[str, str]) -> str | None:
    """Why a browser request from another origin is refused, or None for same-origin and non-browser clients.

    ``headers`` has lower-case names.
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in _BROWSER_SAME_ORIGIN:
        return f"the control API refuses browser requests from other sites (Sec-Fetch-Site: {fetch_site})"
    origin = headers.get("origin")
    if origin is None:
        return None
    host = headers.get("host", "")
    if urlsplit(origin).netloc.lower() != host.lower() or not _is_local_name(host):
        return (f"the control API refuses browser requests from other origins (Origin: {origin}); "
                "use curl or `edgewise tail`, or a page served by this dev server at localhost")
    return None


def has_token(headers: Mapping[str, str], token: str) -> bool:
    """The request carries ``token`` as ``edgewise-control-token`` or ``Authorization: Bearer``."""
    sent = headers.get(TOKEN_HEADER)
    if sent is None:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        sent = value.strip() if scheme.lower() == "bearer" else None
    return sent is not None and hmac.compare_digest(sent.encode(), token.encode())


def missing_token_message() -> str:
    return (f"changing PoP health needs this run's control token: send it as `{TOKEN_HEADER}: <token>` "
            f"(or `Authorization: Bearer <token>`); `edgewise dev` prints it at start, "
            f"and ${TOKEN_ENV} sets it")


def _is_local_name(host: str) -> bool:
    """``localhost`` (and ``*.localhost``) or an IP literal: names that no DNS answer can point elsewhere."""
    hostname = urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True
