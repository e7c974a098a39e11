"""Worker projects in the shape of Cloudflare's templates (wrangler.jsonc with $schema, pyproject.toml
with workers-py and workers-runtime-sdk as dev dependencies), and a poll for answers that come later,
for the end-to-end tests of Cloudflare-shaped Workers. Imported by name (pyproject's pytest pythonpath)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent

import httpx

PYPROJECT = """\
[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.12"
dependencies = []

[dependency-groups]
dev = [
    "workers-py",
    "workers-runtime-sdk"
]
"""
WAIT_S = 10.0


def write_project(root: Path, name: str, config: dict, entry: str) -> Path:
    """A template-shaped project: wrangler.jsonc, pyproject.toml and src/entry.py."""
    (root / "src").mkdir(parents=True)
    config = {"$schema": "node_modules/wrangler/config-schema.json", "name": name, "main": "src/entry.py",
              "compatibility_date": "2025-11-02", "compatibility_flags": ["python_workers"], **config}
    (root / "wrangler.jsonc").write_text("// made by the test, shaped like a Cloudflare template\n"
                                         + json.dumps(config, indent=2))
    (root / "pyproject.toml").write_text(PYPROJECT.format(name=name))
    (root / "src" / "entry.py").write_text(dedent(entry))
    return root


def poll(fetch: Callable[[], httpx.Response], until: Callable[[httpx.Response], bool],
         timeout_s: float = WAIT_S) -> httpx.Response:
    """`fetch()` again until `until(reply)` holds, or the last reply after the timeout."""
    deadline = time.monotonic() + timeout_s
    reply = fetch()
    while not until(reply) and time.monotonic() < deadline:
        time.sleep(0.05)
        reply = fetch()
    return reply
