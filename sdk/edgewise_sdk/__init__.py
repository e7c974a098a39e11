"""edgewise's CPython implementation of the modules a Python Worker imports: ``workers``, ``js``,
``pyodide`` and ``asgi``.

They live under this package, a name edgewise owns, so that Cloudflare's own SDK
(``workers-runtime-sdk``, which installs top-level ``workers`` and ``asgi``) can sit in the same
environment: installing or removing either leaves the other intact. Inside the runtime, a Worker's
``import workers`` (``js``, ``pyodide``, ``asgi`` and their submodules) resolves to these modules:
``install_aliases()`` puts a finder first on ``sys.meta_path``, so they win over any installed
package of the same name in an edgewise process, and nowhere else.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

ALIASES = ("workers", "js", "pyodide", "asgi")


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``workers[.x]`` -> ``edgewise_sdk.workers[.x]``, the very same module object."""

    def __init__(self) -> None:
        self._own_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in ALIASES:
            return None
        target_name = f"{__name__}.{fullname}"
        if importlib.util.find_spec(target_name) is None:
            return None  # `workers.nope`: the usual ModuleNotFoundError, under the name asked for
        return importlib.machinery.ModuleSpec(fullname, self, is_package=False)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(f"{__name__}.{spec.name}")
        self._own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias's spec on the module; give it back its own.
        module.__spec__ = self._own_specs.pop(module.__name__)


_FINDER = _AliasFinder()


def install_aliases() -> None:
    """Make ``workers``, ``js``, ``pyodide`` and ``asgi`` (and their submodules) resolve to ours in
    this process. Idempotent. A same-named module imported before from elsewhere is replaced."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    for name in list(sys.modules):
        top = name.partition(".")[0]
        if top in ALIASES and not getattr(sys.modules[name], "__name__", "").startswith(f"{__name__}."):
            del sys.modules[name]
    for name in ALIASES:
        sys.modules[name] = importlib.import_module(f"{__name__}.{name}")
