"""The one error type of config loading: names the file, the dotted key and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path


class ConfigError(Exception):
    """A config file that cannot be used, e.g.
    `examples/hello/wrangler.toml: 'compatibility_date' must be a date like "2025-11-02", got 12`.

    Validators deep in the tree raise it with a key relative to what they check and no file;
    callers re-raise it with `under(prefix)` and `with_file(path)` so the final message is
    complete without every validator knowing where it sits.
    """

    def __init__(self, file: Path | None, key: str | None, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        super().__init__(format_config_error(file, key, message))

    def with_file(self, file: Path) -> ConfigError:
        """The same error, attributed to `file` (kept if it already names one)."""
        return ConfigError(self.file or file, self.key, self.message)

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key nested under `prefix`, e.g. `edgewise.pops[2]`."""
        return ConfigError(self.file, join_key(prefix, self.key), self.message)


def join_key(prefix: str | None, key: str | None) -> str | None:
    """Dotted key path: `join_key("edgewise", "pops[2]") == "edgewise.pops[2]"`."""
    if not prefix:
        return key
    if not key:
        return prefix
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


def top_key(key: str) -> str:
    """The first segment of a dotted key: `top_key("triggers.crons[1]") == "triggers"`."""
    return re.split(r"[.\[]", key, maxsplit=1)[0]


def format_config_error(file: Path | None, key: str | None, message: str) -> str:
    where = f"{display_path(file)}: " if file is not None else ""
    what = f"'{key}' " if key else ""
    return f"{where}{what}{message}"


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it lies inside it (shorter messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
