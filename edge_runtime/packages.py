"""The Worker's own Python packages: read from its pyproject.toml, installed once into a folder of its own.

Cloudflare's pywrangler reads ``[project].dependencies`` from the pyproject.toml beside the wrangler
config and vendors them into ``python_modules/``. edgewise reads the same list and installs it with
this interpreter's pip into ``.wrangler/python_modules/<hash>/`` beside the config, where ``<hash>``
covers the list, the interpreter and the platform: an unchanged list is a cache hit, a changed one a
fresh folder. Nothing is written into edgewise's own environment; the loader puts the folder on the
Worker's import path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Callable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from .config_error import ConfigError

PYPROJECT = "pyproject.toml"
REQUIREMENTS_TXT = "requirements.txt"
MODULES_FOLDER = Path(".wrangler") / "python_modules"
# The Workers runtime and SDK, which edgewise itself stands in for (names as PEP 503 normalizes them).
PROVIDED = frozenset({"workers-runtime-sdk", "workers-py", "workers", "js", "pyodide", "pyodide-py"})
PIP_ERROR_LINES = 12


class PackageInstallError(Exception):
    """pip could not install the Worker's packages; the message names them and quotes pip's error."""


@dataclasses.dataclass(frozen=True)
class WorkerPackages:
    """What a Worker's pyproject.toml asks for, split into what to install and what edgewise already has."""

    root: Path  # the folder of the wrangler config (and of pyproject.toml)
    pyproject: Path | None
    requirements: tuple[str, ...]  # to install into the Worker's folder
    skipped: tuple[str, ...] = ()  # provided by edgewise, or already in its environment
    requires_python: str | None = None
    allow_build: bool = False  # [tool.pywrangler] allow-build: sdists may be built

    @property
    def cache_key(self) -> str:
        """Stable across runs for the same list on the same interpreter and platform."""
        parts = [*sorted(self.requirements), sys.implementation.cache_tag, sysconfig.get_platform(),
                 f"build={self.allow_build}"]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def folder(self) -> Path:
        return self.root / MODULES_FOLDER / self.cache_key


def read_packages(root: Path) -> WorkerPackages:
    """The Worker's dependencies from ``root/pyproject.toml``; a ConfigError names what to fix."""
    pyproject = root / PYPROJECT
    project, tool = _read_pyproject(pyproject) if pyproject.is_file() else ({}, {})
    listed = project.get("dependencies")
    if listed is None:
        _refuse_requirements_txt(root / REQUIREMENTS_TXT)
    requirements = _parse_requirements(pyproject, listed or [])
    requires_python = _parse_requires_python(pyproject, project.get("requires-python"))
    allow_build = tool.get("pywrangler", {}).get("allow-build", False) is True
    wanted = [req for req in requirements if req.marker is None or req.marker.evaluate()]
    skipped = [req for req in wanted if _is_provided(req) or _installed_version(req) is not None]
    return WorkerPackages(root, pyproject if pyproject.is_file() else None,
                          tuple(str(req) for req in wanted if req not in skipped),
                          tuple(str(req) for req in skipped), requires_python, allow_build)


def _read_pyproject(pyproject: Path) -> tuple[dict, dict]:
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(pyproject, None, f"not valid TOML ({error})") from None
    project, tool = data.get("project", {}), data.get("tool", {})
    if not isinstance(project, dict) or not isinstance(tool, dict):
        raise ConfigError(pyproject, None, "[project] and [tool] must be tables")
    return project, tool


def _refuse_requirements_txt(requirements_txt: Path) -> None:
    """pywrangler stopped reading requirements.txt; show the pyproject.toml lines that replace it."""
    if not requirements_txt.is_file():
        return
    lines = [line.split("#", 1)[0].strip() for line in requirements_txt.read_text(encoding="utf-8").splitlines()]
    listed = "".join(f'  "{line}",\n' for line in lines if line)
    raise ConfigError(requirements_txt, None,
                      "Python Workers no longer take their packages from requirements.txt (Cloudflare's pywrangler "
                      f"refuses it). Move the list into {PYPROJECT} beside it, then delete requirements.txt:\n\n"
                      f"[project]\ndependencies = [\n{listed}]")


def _parse_requirements(pyproject: Path, listed: object) -> list[Requirement]:
    if not isinstance(listed, list):
        raise ConfigError(pyproject, "project.dependencies", 'must be a list of strings such as ["six>=1.16"]')
    requirements = []
    for index, item in enumerate(listed):
        try:
            requirements.append(Requirement(item))
        except (InvalidRequirement, TypeError) as error:
            raise ConfigError(pyproject, f"project.dependencies[{index}]",
                              f"{item!r} is not a requirement such as \"six>=1.16\" ({error})") from None
    return requirements


def _parse_requires_python(pyproject: Path, value: object) -> str | None:
    if value is None:
        return None
    try:
        return str(SpecifierSet(value))  # type: ignore[arg-type]
    except (InvalidSpecifier, TypeError):
        raise ConfigError(pyproject, "project.requires-python",
                          f'{value!r} is not a version specifier such as ">=3.12"') from None


def normalize_name(name: str) -> str:
    """PEP 503: ``Workers_Runtime.SDK`` and ``workers-runtime-sdk`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_provided(requirement: Requirement) -> bool:
    return normalize_name(requirement.name) in PROVIDED


def _installed_version(requirement: Requirement) -> str | None:
    """The version in edgewise's own environment when it satisfies ``requirement`` (extras not asked for)."""
    if requirement.extras:
        return None
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        paths.append(site.getusersitepackages())
    found = next(iter(importlib.metadata.distributions(name=requirement.name, path=paths)), None)
    if found is None or not requirement.specifier.contains(found.version, prereleases=True):
        return None
    return found.version


def python_version_warning(packages: WorkerPackages, version: str | None = None) -> str | None:
    """One line when ``requires-python`` excludes the interpreter that runs the Worker here."""
    version = version or platform.python_version()
    if packages.requires_python is None or SpecifierSet(packages.requires_python).contains(version, prereleases=True):
        return None
    return (f"The Worker asks for Python {packages.requires_python} (requires-python in {PYPROJECT}); edgewise runs "
            f"it on {version}: Cloudflare runs the Python its compatibility date picks, so test there too.")


def install_command(packages: WorkerPackages, target: Path) -> list[str]:
    """This interpreter's pip, into ``target`` only; wheels only unless the Worker allows builds, as pywrangler."""
    command = [sys.executable, "-m", "pip", "install", "--target", str(target), "--no-input",
               "--disable-pip-version-check", "--no-warn-script-location", "--quiet"]
    if not packages.allow_build:
        command += ["--only-binary", ":all:"]
    return [*command, *packages.requirements]


def ensure_installed(packages: WorkerPackages, echo: Callable[[str], None]) -> Path | None:
    """The Worker's packages folder, installed first unless cached; None when there is nothing to install."""
    if not packages.requirements:
        return None
    folder = packages.folder
    if folder.is_dir():
        return folder  # cache hit: the same list was installed before
    names = ", ".join(packages.requirements)
    echo(f"Installing {len(packages.requirements)} package{'s' * (len(packages.requirements) != 1)} for the Worker: "
         f"{names} (into {folder})")
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    result = subprocess.run(install_command(packages, partial), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise PackageInstallError(_install_failure(packages, result))
    _publish(partial, folder)
    return folder


def _publish(partial: Path, folder: Path) -> None:
    """A finished install appears under its final name at once, so an interrupted one is never a cache hit."""
    try:
        partial.rename(folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(partial, ignore_errors=True)  # another run installed the same list meanwhile


def _install_failure(packages: WorkerPackages, result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    output = [line for line in lines if line.startswith("ERROR:")] or lines[-PIP_ERROR_LINES:]  # not its warnings
    where = packages.pyproject or packages.root / PYPROJECT
    return (f"{where}: could not install the Worker's packages ({', '.join(packages.requirements)}) with "
            f"{sys.executable} -m pip (exit {result.returncode}):\n" + "\n".join(output))
