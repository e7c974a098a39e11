"""Worker projects written into a folder, for the config tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edge_runtime.config import ConfigError, load_config

BASE_TOML = """\
name = "hello"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]
"""


def make_project(root: Path, files: dict[str, str], entry: str = "src/entry.py") -> Path:
    """A Worker project under `root` with an (empty) entry module and the given files."""
    (root / entry).parent.mkdir(parents=True, exist_ok=True)
    (root / entry).write_text("")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def toml_project(root: Path, extra: str = "", base: str = BASE_TOML) -> Path:
    return make_project(root, {"wrangler.toml": base + textwrap.dedent(extra)})


def load_error(root: Path, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(root, **kwargs)  # type: ignore[arg-type]
    return caught.value
