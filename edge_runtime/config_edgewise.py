"""Reading the local-only `[edgewise]` table (JSON: `"edgewise": {...}`) into an EdgewiseConfig.

Every key and sub-table is checked strictly: a typo here would silently change the
emulated edge, so unknown keys are errors, not warnings.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from edge_runtime.config_error import ConfigError, join_key, top_key
from edge_runtime.config_schema import (
    BackendSpec,
    EdgewiseConfig,
    LatencyConfig,
    LimitsConfig,
    LocalBackendConfig,
    ModelSource,
    PopSpec,
    builtin_model_names,
)
from edge_runtime.config_values import (
    build,
    describe,
    expect_array,
    expect_bool,
    expect_nonempty_str,
    expect_number,
    expect_str,
    expect_table,
    json_value,
    reject_unknown_keys,
)

POP_KEYS = ("colo", "port", "healthy")
LATENCY_KEYS = tuple(f.name for f in fields(LatencyConfig))
LIMITS_KEYS = tuple(f.name for f in fields(LimitsConfig))
BACKEND_KEYS = tuple(f.name for f in fields(BackendSpec))
LOCAL_BACKEND_KEYS = tuple(f.name for f in fields(LocalBackendConfig))


def parse_edgewise(table: Mapping[str, Any], prefix_of: Callable[[str], str], root: Path) -> EdgewiseConfig:
    """An EdgewiseConfig from the raw table; absent keys take the defaults.

    `prefix_of(key)` is the dotted path of the table a key came from ("edgewise", or
    "env.NAME.edgewise" when an environment overrides it), so errors name the right line.
    Relative model folders are taken from `root`, the config file's directory.
    """
    readers = {**_READERS, "models": functools.partial(_read_models, root=root)}
    try:
        reject_unknown_keys(table, EDGEWISE_KEYS, None)
        kwargs = {key: readers[key](value, key) for key, value in table.items()}
        return EdgewiseConfig(**kwargs)
    except ConfigError as error:
        raise error.under(prefix_of(top_key(error.key or ""))) from None


def _read_pops(value: Any, key: str) -> tuple[PopSpec, ...]:
    items = expect_array(value, key)
    return tuple(_read_pop(item, f"{key}[{i}]") for i, item in enumerate(items))


def _read_pop(item: Any, key: str) -> PopSpec:
    if isinstance(item, str):
        try:
            return PopSpec(item.strip().upper())
        except ConfigError as error:
            raise ConfigError(None, key, error.message) from None  # the string is the colo
    if not isinstance(item, Mapping):
        allowed = 'a PoP code like "LHR" or a table {colo, port, healthy}'
        raise ConfigError(None, key, f"must be {allowed}, got {describe(item)}")
    reject_unknown_keys(item, POP_KEYS, key)
    colo = expect_str(_required(item, "colo", key), f"{key}.colo").strip().upper()
    return build(PopSpec, key, colo=colo, port=item.get("port"), healthy=item.get("healthy", True))


def _read_latency(value: Any, key: str) -> LatencyConfig:
    if value is False or value == "off":
        return LatencyConfig(enabled=False)
    if value is True or value == "on":
        return LatencyConfig()
    if not isinstance(value, Mapping):
        allowed = 'false, "off" or a table {enabled, base_ms, ms_per_1000km}'
        raise ConfigError(None, key, f"must be {allowed}, got {describe(value)}")
    reject_unknown_keys(value, LATENCY_KEYS, key)
    return build(LatencyConfig, key, **value)


def _read_limits(value: Any, key: str) -> LimitsConfig:
    table = expect_table(value, key)
    reject_unknown_keys(table, LIMITS_KEYS, key)
    return build(LimitsConfig, key, **table)


def _read_location_spec(value: Any, key: str) -> str:
    spec = expect_str(value, key).strip()
    # codes are matched upper-case; "51.5,-0.1" has no letters and is unchanged
    return spec.upper() if spec.isalpha() else spec


def _read_ip_locations(value: Any, key: str) -> tuple[tuple[str, str], ...]:
    table = expect_table(value, key)
    return tuple((cidr, _read_location_spec(spec, f'{key}."{cidr}"')) for cidr, spec in table.items())


def _read_cf(value: Any, key: str) -> Mapping[str, Any]:
    return json_value(expect_table(value, key), key)


def _read_backends(value: Any, key: str) -> tuple[BackendSpec, ...]:
    items = expect_array(value, key)
    return tuple(_read_backend(item, f"{key}[{i}]") for i, item in enumerate(items))


def _read_backend(item: Any, key: str) -> BackendSpec:
    table = expect_table(item, key)
    reject_unknown_keys(table, BACKEND_KEYS, key)
    url = expect_str(_required(table, "url", key), f"{key}.url")
    location = table.get("location")
    if location is not None:
        location = _read_location_spec(location, f"{key}.location")
    return build(BackendSpec, key, url=url, location=location, token=table.get("token"))


def _read_local_backend(value: Any, key: str) -> LocalBackendConfig:
    table = dict(expect_table(value, key))
    reject_unknown_keys(table, LOCAL_BACKEND_KEYS, key)
    if table.get("location") is not None:
        table["location"] = _read_location_spec(table["location"], f"{key}.location")
    return build(LocalBackendConfig, key, **table)


def _read_models(value: Any, key: str, root: Path) -> tuple[ModelSource, ...]:
    table = expect_table(value, key)
    return tuple(read_model_source(name, source, f'{key}."{name}"', root) for name, source in table.items())


def read_model_source(name: str, value: Any, key: str, root: Path) -> ModelSource:
    """One `[edgewise.models]` entry (or `edgewise dev --model NAME=PATH`): a built-in model name, or else a
    folder (relative to `root`) that must exist; ConfigError under `key` otherwise."""
    text = expect_nonempty_str(value, key).strip()
    builtins = builtin_model_names()
    if text in builtins:
        return build(ModelSource, key, name=name, builtin=text)
    folder = (root / Path(text).expanduser()).resolve()
    if folder.is_dir():
        return build(ModelSource, key, name=name, folder=folder)
    raise ConfigError(None, key, _not_a_model_source(text, folder, builtins))


def _not_a_model_source(text: str, folder: Path, builtins: tuple[str, ...]) -> str:
    options = f"a Hugging Face model folder or a built-in model ({', '.join(builtins)})"
    if text.startswith("@"):  # meant as a model name
        close = difflib.get_close_matches(text, builtins, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f'must be {options}, got "{text}": no built-in model has that name{hint}'
    if folder.exists():
        return f'must be {options}: "{folder}" is a file, not a model folder'
    return f'must be {options}: the folder "{folder}" does not exist and "{text}" is no built-in model name'


def _required(table: Mapping[str, Any], name: str, key: str) -> Any:
    if name not in table:
        raise ConfigError(None, join_key(key, name), "is required")
    return table[name]


_READERS: dict[str, Callable[[Any, str], Any]] = {
    "pops": _read_pops,
    "latency": _read_latency,
    "limits": _read_limits,
    "client_location": _read_location_spec,
    "ip_locations": _read_ip_locations,
    "cf": _read_cf,
    "backends": _read_backends,
    "backend": _read_local_backend,
    "strict_models": expect_bool,
    "kv_propagation_ms": expect_number,
}
EDGEWISE_KEYS = (*_READERS, "models")  # models also need the config's directory: see parse_edgewise
