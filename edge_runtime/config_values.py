"""Typed readers and validators for the raw values of a config file, each raising ConfigError.

Readers (`expect_*`) turn a parsed TOML/JSON value into a Python type or fail; validators
(`check_*`) enforce a value's format. Keys passed here are relative to whatever the caller
checks; the caller nests them (`ConfigError.under`) and names the file (`with_file`).
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from edge_runtime.catalog import CATALOG, DEFAULT_POPS, location_for_country
from edge_runtime.config_error import ConfigError, join_key

MAX_PORT = 65535
T = TypeVar("T")


def describe(value: Any) -> str:
    """A value as the user wrote it in TOML/JSON, for "got ..." in messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + '..."'
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, (datetime.date, datetime.time)):
        return f"the unquoted TOML value {value.isoformat()}"
    return repr(value)


def _fail(key: str | None, allowed: str, value: Any) -> ConfigError:
    return ConfigError(None, key, f"must be {allowed}, got {describe(value)}")


# ---- readers ----------------------------------------------------------------------------


def expect_table(value: Any, key: str | None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(key, "a table (JSON object)", value)
    return value


def expect_array(value: Any, key: str | None) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(key, "an array", value)
    return value


def expect_str(value: Any, key: str | None) -> str:
    if not isinstance(value, str):
        raise _fail(key, "a string", value)
    return value


def expect_nonempty_str(value: Any, key: str | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, "a non-empty string", value)
    return value


def expect_bool(value: Any, key: str | None) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, "true or false", value)
    return value


def expect_int(value: Any, key: str | None, minimum: int = 0) -> int:
    # bool is an int subclass in Python; `port = true` is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, f"an integer >= {minimum}", value)
    return value


def expect_number(value: Any, key: str | None, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise _fail(key, f"a number >= {minimum:g}", value)
    return float(value)


def expect_str_list(value: Any, key: str | None) -> tuple[str, ...]:
    items = expect_array(value, key)
    return tuple(expect_str(item, join_key(key, f"[{i}]")) for i, item in enumerate(items))


def reject_unknown_keys(table: Mapping[str, Any], allowed: Iterable[str], key: str | None) -> None:
    allowed_keys = tuple(allowed)
    for name in table:
        if name not in allowed_keys:
            hint = _did_you_mean(name, allowed_keys)
            message = f"is not a known key{hint}; allowed keys are: {', '.join(allowed_keys)}"
            raise ConfigError(None, join_key(key, name), message)


def json_value(value: Any, key: str | None) -> Any:
    """A deep copy of `value`, checked to be JSON data (TOML dates/times are not)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): json_value(v, join_key(key, str(k))) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v, join_key(key, f"[{i}]")) for i, v in enumerate(value)]
    raise _fail(key, "a string or a JSON value (table, array, number, boolean)", value)


def build(cls: Callable[..., T], key: str, **kwargs: Any) -> T:
    """`cls(**kwargs)` with its validation errors nested under `key`."""
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise error.under(key) from None


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---- validators -------------------------------------------------------------------------

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def check_compatibility_date(value: Any, key: str | None) -> None:
    allowed = 'a date like "2025-11-02"'
    if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
        raise _fail(key, allowed, value)
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        raise _fail(key, f"{allowed} (a real calendar date)", value) from None


def check_port(value: Any, key: str | None) -> None:
    # 0 asks the OS for a free port, which tests rely on
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PORT:
        raise _fail(key, f"a port number from 0 to {MAX_PORT}", value)


def check_colo(code: Any, key: str | None) -> None:
    if isinstance(code, str) and code in CATALOG:
        return
    examples = ", ".join(DEFAULT_POPS)
    hint = _did_you_mean(code.upper(), CATALOG) if isinstance(code, str) else ""
    allowed = f"a PoP code from the catalog{hint}, e.g. {examples} ({len(CATALOG)} known)"
    raise _fail(key, allowed, code)


_LAT_LON_RE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*")
LOCATION_SPEC_HELP = '"LAT,LON", a PoP code like "LHR" or a two-letter country code like "GB"'


def check_location_spec(spec: Any, key: str | None) -> None:
    """A client/backend location: "LAT,LON", a catalog IATA code, or an ISO country code."""
    if not isinstance(spec, str):
        raise _fail(key, LOCATION_SPEC_HELP, spec)
    lat_lon = _LAT_LON_RE.fullmatch(spec)
    if lat_lon:
        lat, lon = float(lat_lon.group(1)), float(lat_lon.group(2))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise _fail(key, "a latitude in [-90, 90] and a longitude in [-180, 180]", spec)
        return
    if len(spec) == 3 and spec.isalpha():
        check_colo(spec.upper(), key)
        return
    if not (len(spec) == 2 and spec.isalpha()):
        raise _fail(key, LOCATION_SPEC_HELP, spec)
    if location_for_country(spec) is None:
        raise _fail(key, "a country code with a city in the catalog", spec)


def check_cidr(cidr: Any, key: str | None) -> str:
    """The network in canonical form ("203.0.113.7/24" -> "203.0.113.0/24")."""
    try:
        return str(ipaddress.ip_network(expect_str(cidr, key), strict=False))
    except ValueError:
        raise _fail(key, 'an IP network like "203.0.113.0/24" or "2001:db8::/32"', cidr) from None


# ---- cron: Cloudflare's 5-field syntax
# (https://developers.cloudflare.com/workers/configuration/cron-triggers/)

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# (field name, lowest value, highest value, names of values)
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTHS)}),
    # Cloudflare documents 1-7 (Sunday = 1); 0 is accepted too as most cron dialects use it
    ("day of week", 0, 7, {name: i + 1 for i, name in enumerate(_WEEKDAYS)}),
)


def check_cron(expr: Any, key: str | None) -> None:
    allowed = 'a 5-field cron expression like "*/5 * * * *" (minute hour day month weekday)'
    fields = expr.split() if isinstance(expr, str) else []
    if len(fields) != len(_CRON_FIELDS):
        raise _fail(key, allowed, expr)
    for text, spec in zip(fields, _CRON_FIELDS):
        if not all(_is_cron_part(part.upper(), spec) for part in text.split(",")):
            name, low, high, _ = spec
            message = (
                f"has an invalid {name} field {text!r} (allowed: {low}-{high}, *, a-b, a,b, */n), "
                f"got {describe(expr)}"
            )
            raise ConfigError(None, key, message)


def _is_cron_part(part: str, spec: tuple[str, int, int, dict[str, int]]) -> bool:
    name, low, high, names = spec
    base, slash, step = part.partition("/")
    if slash and not (step.isdigit() and int(step) >= 1):
        return False
    if base in ("*", "?") or (name == "day of month" and base in ("L", "LW")):
        return True
    if name == "day of month" and base.endswith("W"):
        base = base[:-1]  # nearest weekday to the given day
    if name == "day of week":
        base, hash_mark, nth = base.partition("#")  # "MON#2": second Monday
        if hash_mark and not (nth.isdigit() and 1 <= int(nth) <= 5):
            return False
        base = base[:-1] if base.endswith("L") and len(base) > 1 else base  # "5L": last Friday
    bounds = base.split("-")
    if len(bounds) > 2:
        return False
    values = [_cron_value(bound, low, high, names) for bound in bounds]
    return None not in values and values == sorted(values)


def _cron_value(text: str, low: int, high: int, names: dict[str, int]) -> int | None:
    if text in names:
        return names[text]
    if text.isdigit() and low <= int(text) <= high:
        return int(text)
    return None
