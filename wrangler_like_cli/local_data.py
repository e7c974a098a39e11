"""What the data commands (`edgewise kv|d1|r2|vectorize ...`) share: the Worker's config, one of its
bindings, and the state folder `edgewise dev` keeps that binding's data in.

They act on the same files as a running `edgewise dev` (SQLite in WAL mode: both may run at once).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edge_runtime.bindings import StateDir
from edge_runtime.config import BindingSpec, ConfigError, WorkerConfig, load_config

from .output import fail

F = TypeVar("F", bound=Callable[..., Any])


def local_options(command: F) -> F:
    """The options every data command takes, as wrangler's do."""
    for option in reversed([
        click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="The Worker's wrangler.toml / wrangler.jsonc (default: found from the current folder)."),
        click.option("--env", "-e", "env_name", help="Use the [env.NAME] section of the config."),
        click.option("--persist-to", type=click.Path(file_okay=False, path_type=Path),
                     help="The folder `edgewise dev --persist-to` keeps data in (default: .wrangler/state)."),
        click.option("--local/--remote", default=True,
                     help="Act on the local data (the default; --remote is Cloudflare's and is not offered here)."),
    ]):
        command = option(command)
    return command


def open_project(config_path: Path | None, env_name: str | None, persist_to: Path | None,
                 local: bool) -> tuple[WorkerConfig, StateDir]:
    if not local:
        fail("--remote acts on Cloudflare's own data; edgewise keeps local data only: drop --remote")
    try:
        config = load_config(Path.cwd(), config_path, env_name)
    except ConfigError as error:
        fail(str(error))
        raise  # unreachable: fail() exits
    return config, StateDir.for_config(config, persist_to)


def find_binding(config: WorkerConfig, kind: str, wanted: str, *, also: tuple[str, ...] = ()) -> BindingSpec:
    """The `kind` binding named `wanted` (its binding name, or one of the `also` settings, e.g. its id)."""
    specs = [spec for spec in config.bindings if spec.kind == kind]
    for spec in specs:
        if spec.name == wanted or any(spec.settings.get(key) == wanted for key in also):
            return spec
    declared = ", ".join(str(spec.name) for spec in specs) or f"none: add a [[{kind}]] entry"
    fail(f"{config.file.name} has no {kind} binding {wanted!r}; declared: {declared}")
    raise AssertionError  # unreachable: fail() exits
