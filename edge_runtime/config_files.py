"""Finding and parsing the files a Worker's config comes from: wrangler.{json,jsonc,toml} and
the dotenv files (.dev.vars, .env) that hold local secrets. Knows file formats, not keys."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import json5
from dotenv import dotenv_values

from edge_runtime.config_error import ConfigError

CONFIG_FILENAMES = ("wrangler.json", "wrangler.jsonc", "wrangler.toml")  # lookup order, like wrangler
DOT_ENV_SWITCH = "CLOUDFLARE_LOAD_DEV_VARS_FROM_DOT_ENV"
_JSON5_ERROR_RE = re.compile(r"<string>:(\d+) (.*)", re.DOTALL)


def find_config(project_dir: Path) -> Path:
    """The first of CONFIG_FILENAMES present in `project_dir`, as an absolute path."""
    for name in CONFIG_FILENAMES:
        candidate = project_dir / name
        if candidate.is_file():
            return candidate.resolve()
    names = ", ".join(CONFIG_FILENAMES)
    message = f"no Worker config in {project_dir.resolve()}: expected one of {names}"
    raise ConfigError(None, None, message)


def read_config_file(path: Path) -> dict[str, Any]:
    """The top-level table of a TOML or JSON(C) config; the format follows the file suffix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, None, f"cannot read config file: {error}") from None
    is_json = path.suffix in (".json", ".jsonc")
    data = _parse_json(path, text) if is_json else _parse_toml(path, text)
    if not isinstance(data, dict):
        raise ConfigError(path, None, "must contain a JSON object at the top level")
    return data


def _parse_toml(path: Path, text: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message already ends in "(at line N, column M)"
        raise ConfigError(path, None, f"is not valid TOML: {error}") from None


def _parse_json(path: Path, text: str) -> Any:
    # wrangler parses .json and .jsonc alike: comments and trailing commas are allowed in both
    try:
        return json5.loads(text)
    except ValueError as error:
        match = _JSON5_ERROR_RE.fullmatch(str(error))
        detail = f"line {match.group(1)}: {match.group(2)}" if match else str(error)
        raise ConfigError(path, None, f"is not valid JSON: {detail}") from None


def secrets_files(root: Path, env_name: str | None) -> tuple[Path, ...]:
    """The dotenv files local secrets come from, later ones overriding earlier ones.

    `.dev.vars.<env>` or `.dev.vars` win outright; only without them does wrangler read the
    `.env` family, unless CLOUDFLARE_LOAD_DEV_VARS_FROM_DOT_ENV=false.
    """
    dev_vars = [root / f".dev.vars.{env_name}"] if env_name else []
    for path in [*dev_vars, root / ".dev.vars"]:
        if path.is_file():
            return (path,)
    if os.environ.get(DOT_ENV_SWITCH, "true").strip().lower() == "false":
        return ()
    names = [".env", ".env.local"]
    if env_name:
        names += [f".env.{env_name}", f".env.{env_name}.local"]
    return tuple(root / name for name in names if (root / name).is_file())


def read_secrets(root: Path, env_name: str | None) -> dict[str, str]:
    """Secrets for local dev from `secrets_files`, as wrangler's `secret_text` bindings."""
    secrets: dict[str, str] = {}
    for path in secrets_files(root, env_name):
        parsed = dotenv_values(path, interpolate=False, encoding="utf-8")
        # a bare `KEY` line has no value; dotenv (node) skips it, so do we
        secrets.update({key: value for key, value in parsed.items() if value is not None})
    return secrets
