"""Loading a Worker's wrangler config the way wrangler does: find the file, select the
environment, apply `--var` overrides and local secrets, and validate it into a WorkerConfig.

The rest of edgewise imports config types from here; the schema, value checks, file
formats and the `[edgewise]` table live in the `config_*` modules next to this one.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_runtime.config_edgewise import parse_edgewise
from edge_runtime.config_error import ConfigError, join_key, top_key
from edge_runtime.config_files import CONFIG_FILENAMES, find_config, read_config_file, read_secrets
from edge_runtime.config_schema import (
    BINDING_KINDS,
    LIST_BINDING_KINDS,
    NESTED_BINDING_KINDS,
    TABLE_BINDING_KINDS,
    BackendSpec,
    BindingSpec,
    DevConfig,
    EdgewiseConfig,
    LatencyConfig,
    LimitsConfig,
    LocalBackendConfig,
    ModelSource,
    PopSpec,
    WorkerConfig,
)
from edge_runtime.config_values import (
    build,
    expect_array,
    expect_nonempty_str,
    expect_str,
    expect_str_list,
    expect_table,
    json_value,
)

__all__ = [
    "CONFIG_FILENAMES",
    "BackendSpec",
    "BindingSpec",
    "ConfigError",
    "DevConfig",
    "EdgewiseConfig",
    "LatencyConfig",
    "LimitsConfig",
    "LocalBackendConfig",
    "ModelSource",
    "PopSpec",
    "WorkerConfig",
    "find_config",
    "load_config",
]

USED_KEYS = frozenset({
    "name", "main", "compatibility_date", "compatibility_flags", "vars", "ai", "triggers",
    "dev", "env", "edgewise", "migrations", *BINDING_KINDS,
})  # fmt: skip
# Cloudflare keys edgewise does not act on; accepted silently as wrangler would accept them
# (workers-sdk packages/workers-utils/src/config/environment.ts and config.ts).
IGNORED_KEYS = frozenset({
    "$schema", "account_id", "routes", "route", "workers_dev", "preview_urls",
    "observability", "build", "rules", "placement", "limits",
    "tail_consumers", "streaming_tail_consumers", "logfwdr", "unsafe", "define", "tsconfig", "jsx_factory", "jsx_fragment", "no_bundle", "minify",
    "keep_names", "first_party_worker", "logpush", "upload_source_maps", "containers",
    "cloudchamber", "compliance_region", "site", "legacy_env", "send_metrics", "keep_vars",
    "python_modules", "base_dir", "find_additional_modules", "preserve_file_names", "alias",
    "wasm_modules", "text_blobs", "data_blobs", "usage_model", "node_compat", "secrets",
    "unsafe_hello_world", "topLevelName", "targetEnvironment",
})  # fmt: skip
# wrangler: bindings must be repeated in each env (assets, a binding or not, are inherited)
NOT_INHERITED_KEYS = ("vars", "ai", *(kind for kind in BINDING_KINDS if kind != "assets"))
TOP_LEVEL_ONLY_KEYS = ("dev", "env")  # wrangler reads these from the top level only
DEV_KEYS = (
    "ip", "port", "local_protocol", "upstream_protocol", "host", "inspector_port",
    "enable_containers", "container_engine", "generate_types",
)  # fmt: skip
PYTHON_WORKERS_FLAG = "python_workers"


def load_config(
    project_dir: Path,
    config_path: Path | None = None,
    env_name: str | None = None,
    var_overrides: Mapping[str, str] = {},  # noqa: B006 - read only
) -> WorkerConfig:
    """The validated config of the Worker in `project_dir` (or at `config_path`, the `-c` flag).

    A relative `config_path` is taken from the working directory, as wrangler does, or
    from `project_dir` when it is not there.
    """
    file = _config_file(project_dir, config_path)
    raw = read_config_file(file)
    try:
        return _worker_config(file, raw, env_name, var_overrides)
    except ConfigError as error:
        raise error.with_file(file) from None


def _config_file(project_dir: Path, config_path: Path | None) -> Path:
    if config_path is None:
        return find_config(project_dir)
    path = Path(config_path)
    if not path.is_absolute() and not path.exists() and (project_dir / path).exists():
        path = project_dir / path
    return path.resolve()


def _worker_config(
    file: Path, raw: Mapping[str, Any], env_name: str | None, var_overrides: Mapping[str, str]
) -> WorkerConfig:
    root = file.parent
    env_table = _env_table(raw, env_name)
    merged = _effective_keys(raw, env_table, env_name)
    key_of = _key_path(env_table, env_name)
    main = expect_nonempty_str(_required(merged, "main", 'e.g. "src/entry.py"'), key_of("main"))
    date = _required(merged, "compatibility_date", 'e.g. "2025-11-02"')
    flags = expect_str_list(merged.get("compatibility_flags", []), key_of("compatibility_flags"))
    fields: dict[str, Any] = dict(
        name=_name(raw, env_table, env_name, key_of),
        main=(root / main).resolve(),
        compatibility_date=_compatibility_date(date),
        compatibility_flags=flags,
        vars=_vars(merged.get("vars", {}), var_overrides, key_of("vars")),
        crons=_crons(merged.get("triggers", {}), key_of("triggers")),
        ai_binding=_ai_binding(merged.get("ai"), key_of("ai")),
        bindings=_bindings(merged, key_of),
        migrations=_tables(raw.get("migrations", []), "migrations"),  # wrangler: top level only
        queue_consumers=_tables(expect_table(merged.get("queues", {}), key_of("queues")).get("consumers", []),
                                join_key(key_of("queues"), "consumers")),
        dev=build(DevConfig, "dev", **_dev_fields(raw.get("dev", {}))),
        edgewise=_edgewise(raw, env_table, env_name, root),
    )
    try:
        return WorkerConfig(
            file=file,
            root=root,
            secrets=read_secrets(root, env_name),
            env_name=env_name,
            warnings=_warnings(raw, env_table, env_name, flags),
            **fields,
        )
    except ConfigError as error:  # keys from WorkerConfig's own checks are top-level keys
        raise ConfigError(None, key_of(error.key or ""), error.message) from None


def _env_table(raw: Mapping[str, Any], env_name: str | None) -> Mapping[str, Any]:
    if env_name is None:
        return {}
    envs = expect_table(raw.get("env", {}), "env")
    if env_name not in envs:
        defined = ", ".join(sorted(envs)) or "none (add an [env.NAME] table)"
        message = f"has no environment {env_name!r}; defined environments: {defined}"
        raise ConfigError(None, "env", message)
    return expect_table(envs[env_name], f"env.{env_name}")


def _effective_keys(
    raw: Mapping[str, Any], env_table: Mapping[str, Any], env_name: str | None
) -> dict[str, Any]:
    """Top-level keys with the environment's on top; `vars`/`ai` come from the env only."""
    if env_name is None:
        return dict(raw)
    merged = {k: v for k, v in raw.items() if k not in NOT_INHERITED_KEYS}
    merged.update({k: v for k, v in env_table.items() if k not in TOP_LEVEL_ONLY_KEYS})
    return merged


def _key_path(env_table: Mapping[str, Any], env_name: str | None) -> Callable[[str], str]:
    """Maps a dotted key to where it was read from, e.g. "main" -> "env.staging.main"."""

    def key_of(key: str) -> str:
        top = top_key(key)
        from_env = env_name is not None and (top in env_table or top in NOT_INHERITED_KEYS)
        return join_key(f"env.{env_name}", key) if from_env and top not in TOP_LEVEL_ONLY_KEYS else key

    return key_of


def _required(table: Mapping[str, Any], key: str, example: str) -> Any:
    if key not in table:
        raise ConfigError(None, key, f"is required ({example})")
    return table[key]


def _name(
    raw: Mapping[str, Any],
    env_table: Mapping[str, Any],
    env_name: str | None,
    key_of: Callable[[str], str],
) -> str:
    if "name" in env_table:
        return expect_nonempty_str(env_table["name"], key_of("name"))
    name = expect_nonempty_str(_required(raw, "name", 'e.g. "my-worker"'), "name")
    # wrangler (legacy_env, its default) names an environment's Worker "<name>-<env>"
    return f"{name}-{env_name}" if env_name else name


def _compatibility_date(value: Any) -> Any:
    # an unquoted TOML date (compatibility_date = 2025-11-02) parses as a date; keep its text
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value.isoformat()
    return value  # WorkerConfig checks the format


def _vars(value: Any, var_overrides: Mapping[str, str], key: str) -> dict[str, Any]:
    variables = dict(json_value(expect_table(value, key), key))
    variables.update({name: str(text) for name, text in var_overrides.items()})
    return variables


def _crons(value: Any, key: str) -> tuple[str, ...]:
    triggers = expect_table(value, key)
    return expect_str_list(triggers.get("crons", []), join_key(key, "crons"))


def _ai_binding(value: Any, key: str) -> str | None:
    if value is None:
        return None
    table = expect_table(value, key)
    if "binding" not in table:
        message = 'is required: the name of the binding, e.g. "AI"'
        raise ConfigError(None, join_key(key, "binding"), message)
    return table["binding"]  # WorkerConfig checks it is a valid name


def _bindings(merged: Mapping[str, Any], key_of: Callable[[str], str]) -> tuple[BindingSpec, ...]:
    """Every binding declared, of every kind (which of them run here is the runtime's to say)."""
    specs = []
    for kind in BINDING_KINDS:
        if kind not in merged:
            continue
        key = key_of(kind)
        if kind in TABLE_BINDING_KINDS:
            table = expect_table(merged[kind], key)
            name = table.get("binding")
            if name is None and kind != "assets":
                raise ConfigError(None, join_key(key, "binding"), 'is required: the name of the binding, e.g. "IMAGES"')
            specs.append(BindingSpec(kind, expect_str(name, join_key(key, "binding")) if name is not None else None,
                                     table))
            continue
        if kind in NESTED_BINDING_KINDS:
            inner, name_key = NESTED_BINDING_KINDS[kind]
            entries, key = expect_table(merged[kind], key).get(inner, []), join_key(key, inner)
        else:
            entries, name_key = merged[kind], LIST_BINDING_KINDS[kind]
        for index, entry in enumerate(expect_array(entries, key)):
            where = f"{key}[{index}]"
            table = expect_table(entry, where)
            if name_key not in table:
                raise ConfigError(None, join_key(where, name_key), 'is required: the name the Worker reads it by, '
                                                                  'e.g. "MY_BINDING"')
            specs.append(BindingSpec(kind, expect_str(table[name_key], join_key(where, name_key)), table))
    return tuple(specs)


def _tables(value: Any, key: str) -> tuple[Mapping[str, Any], ...]:
    """An array of tables as written (``migrations``, ``queues.consumers``); their owners check the keys."""
    return tuple(expect_table(entry, f"{key}[{index}]") for index, entry in enumerate(expect_array(value, key)))


def _dev_fields(value: Any) -> dict[str, Any]:
    table = expect_table(value, "dev")
    return {key: table[key] for key in ("ip", "port") if key in table}


def _edgewise(
    raw: Mapping[str, Any], env_table: Mapping[str, Any], env_name: str | None, root: Path
) -> EdgewiseConfig:
    """The [edgewise] table, inherited by environments; an env's sub-keys override it."""
    base = expect_table(raw.get("edgewise", {}), "edgewise")
    override = expect_table(env_table.get("edgewise", {}), f"env.{env_name}.edgewise")

    def prefix_of(key: str) -> str:
        return f"env.{env_name}.edgewise" if key in override else "edgewise"

    return parse_edgewise({**base, **override}, prefix_of, root)


def _warnings(
    raw: Mapping[str, Any], env_table: Mapping[str, Any], env_name: str | None, flags: tuple[str, ...]
) -> tuple[str, ...]:
    """What wrangler would warn about but still run: unknown keys, non-inherited bindings."""
    found = [f'Unexpected fields found in top-level field: "{key}"' for key in _unknown_keys(raw)]
    env_path = f"env.{env_name}"
    found += [f'Unexpected fields found in {env_path} field: "{key}"'
              for key in _unknown_keys(env_table)]  # fmt: skip
    found += [f'"{key}" is only read from the top level; it is ignored in {env_path}'
              for key in TOP_LEVEL_ONLY_KEYS if key in env_table]  # fmt: skip
    if env_name is not None:
        found += [
            f'"{key}" exists at the top level, but not on "{env_path}"; it is not inherited by '
            f'environments, so {env_path} has none. Add "{key}" to "{env_path}" if you need it.'
            for key in NOT_INHERITED_KEYS
            if key in raw and key not in env_table
        ]
    dev = raw.get("dev", {})
    found += [f'Unexpected fields found in dev field: "{key}"' for key in dev if key not in DEV_KEYS]
    if PYTHON_WORKERS_FLAG not in flags:
        found.append(f'compatibility_flags lacks "{PYTHON_WORKERS_FLAG}" (Cloudflare needs it)')
    return tuple(found)


def _unknown_keys(table: Mapping[str, Any]) -> list[str]:
    return [key for key in table if key not in USED_KEYS and key not in IGNORED_KEYS]
