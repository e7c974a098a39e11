"""Cloudflare's own SDK (`workers-runtime-sdk`, and `workers-py` which needs it) installed from the
package index beside edgewise: edgewise and a Worker keep working, and removing it leaves edgewise
intact. edgewise owns no top-level module another distribution installs."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from edgewise_sdk import ALIASES

WORKER = """\
import workers
from workers import Response, WorkerEntrypoint
import js

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"{workers.__name__} {js.__name__} {Response.__module__}")
"""
RUN_WORKER = """\
import asyncio, sys
from pathlib import Path
import httpx
from edge_runtime.config import load_config
from edge_runtime.edge import Edge

async def main():
    edge = Edge(load_config(Path(sys.argv[1])))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url="http://x") as c:
            print((await c.get("/")).text)
    finally:
        await edge.aclose()

asyncio.run(main())
"""
OURS = "edgewise_sdk.workers edgewise_sdk.js edgewise_sdk.workers.response"


def test_edgewise_installs_no_top_level_module_of_the_worker_sdk() -> None:
    owners = importlib.metadata.packages_distributions()
    assert not [name for name in ALIASES if "edgewise" in owners.get(name, [])]
    assert "edgewise" in owners["edgewise_sdk"]


def run(python: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=timeout)


def test_cloudflare_sdk_installed_beside_edgewise_breaks_nothing(tmp_path: Path) -> None:
    """A throwaway venv that sees edgewise's environment behind its own site-packages, where pip
    installs Cloudflare's SDK from the index (as `uv sync` does for a Worker template)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (purelib / "zz_edgewise.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    installed = run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "workers-runtime-sdk",
                    "workers-py", timeout=600)
    assert installed.returncode == 0, f"pip could not install Cloudflare's SDK from the index:\n{installed.stderr}"
    # Outside edgewise, `workers` is Cloudflare's (which imports only inside Pyodide: it needs `js`).
    theirs = run(python, "-c", "import importlib.util; print(importlib.util.find_spec('workers').origin)")
    assert theirs.stdout.startswith(str(purelib)), theirs

    project = tmp_path / "worker"
    (project / "src").mkdir(parents=True)
    (project / "src" / "entry.py").write_text(WORKER)
    (project / "wrangler.toml").write_text(textwrap.dedent("""\
        name = "beside"
        main = "src/entry.py"
        compatibility_date = "2025-11-02"
        compatibility_flags = ["python_workers"]
    """))
    (tmp_path / "run_worker.py").write_text(RUN_WORKER)
    for state in ("with Cloudflare's SDK", "after uninstalling it"):
        version = run(python, "-m", "wrangler_like_cli.main", "--version")
        assert version.returncode == 0 and "edgewise" in version.stdout, (state, version.stderr)
        answered = run(python, str(tmp_path / "run_worker.py"), str(project))
        assert answered.returncode == 0 and answered.stdout.strip() == OURS, (state, answered.stderr)
        if state == "with Cloudflare's SDK":
            removed = run(python, "-m", "pip", "uninstall", "--yes", "--quiet", "workers-runtime-sdk")
            assert removed.returncode == 0, removed.stderr
    gone = run(python, "-c", "import importlib.util; print(importlib.util.find_spec('workers'))")
    assert gone.stdout.strip() == "None", gone  # theirs is gone; ours was never top-level


@pytest.mark.parametrize("name", ALIASES)
def test_inside_the_runtime_each_name_is_ours(name: str) -> None:
    module = __import__(name)  # (`asgi` is `workers.asgi` under a second name, as in Cloudflare's SDK)
    assert module.__name__.startswith("edgewise_sdk.") and module is sys.modules[f"edgewise_sdk.{name}"]
