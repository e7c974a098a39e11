"""Imports a Worker's main module once per PoP, so module globals are not shared, as between isolates."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from edgewise_sdk import install_aliases
from edgewise_sdk.workers import _state

# A Worker's `import workers` (js, pyodide, asgi) is ours in this process, even where Cloudflare's
# own SDK is installed too.
install_aliases()
_generation = itertools.count(1)


class WorkerLoadError(Exception):
    """The main module failed to import or declares its handlers wrongly; the message says what to fix."""


def import_isolated(main: Path, instance: str, env: Any,
                    packages: Path | None = None) -> tuple[ModuleType, frozenset[str]]:
    """Import ``main`` under a name of its own; modules from its folder are imported afresh for it too.

    Modules from the Worker's own folder that the import pulls in are taken out of ``sys.modules``
    afterwards, so the next PoP's import gets its own copies (the loaded module keeps references).
    Returns the module and the names of those modules of its own. ``packages``: the folder its
    pyproject.toml dependencies were installed into (edge_runtime/packages.py), importable after its own
    modules; like site-packages, modules from there are shared by the PoPs and keep their bytecode.
    """
    folder = str(main.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if packages is not None and str(packages) not in sys.path:
        sys.path.insert(sys.path.index(folder) + 1, str(packages))  # the Worker's own modules come first
    before = set(sys.modules)
    name = f"_edgewise_{instance}_{next(_generation)}_{main.stem}"
    token = _state.current.set(_state.Invocation(env))  # `from workers import env` at import time: this PoP's
    finder = _WorkerFolderFinder(main.parent, packages)
    sys.meta_path.insert(0, finder)
    try:
        module = _exec_module(name, main)
    finally:
        sys.meta_path.remove(finder)
        _state.current.reset(token)
        local_names = _forget_local_modules(before, main.parent, packages)
    return module, frozenset(local_names)


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compiles the Worker's own modules from source on every load.

    A cached .pyc counts as fresh when the source's mtime (whole seconds) and size match, so a
    reload after a same-size edit within the same second would otherwise run the old code.
    """

    def get_code(self, fullname: str) -> Any:
        return self.source_to_code(self.get_data(self.path), self.path)


class _WorkerFolderFinder(importlib.abc.MetaPathFinder):
    """During a load, modules from the Worker's folder get a ``_SourceOnlyLoader``; others are left alone."""

    def __init__(self, folder: Path, packages: Path | None = None) -> None:
        self._folder = folder
        self._packages = packages

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None
        if not _is_own_module(spec.origin, self._folder, self._packages):
            return None  # a venv or the packages folder inside the Worker's folder keeps its cached bytecode
        spec.loader = _SourceOnlyLoader(spec.loader.name, spec.loader.path)
        return spec


def _exec_module(name: str, main: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, main, loader=_SourceOnlyLoader(name, str(main)))
    if spec is None or spec.loader is None:
        raise WorkerLoadError(f"{main}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as error:  # a Worker's top level may raise anything, SystemExit included
        sys.modules.pop(name, None)
        detail = "".join(traceback.format_exception(error)).rstrip()
        raise WorkerLoadError(f"{main}: the module raised while being imported:\n{detail}") from error
    return module


def _is_own_module(path: str, folder: Path, packages: Path | None) -> bool:
    """A module of the Worker's own source, not an installed package that happens to sit in its folder."""
    if "site-packages" in path or (packages is not None and Path(path).is_relative_to(packages)):
        return False
    return Path(path).is_relative_to(folder)


def _forget_local_modules(before: set[str], folder: Path, packages: Path | None = None) -> set[str]:
    forgotten = set()
    for name in set(sys.modules) - before:
        path = getattr(sys.modules[name], "__file__", None)
        if path and _is_own_module(path, folder, packages):
            del sys.modules[name]
            forgotten.add(name)
    return forgotten
