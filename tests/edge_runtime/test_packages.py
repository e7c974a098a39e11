"""The Worker's own packages: [project].dependencies read from its pyproject.toml, installed with pip into
.wrangler/python_modules/<hash> (a real install from the package index), cached, and imported by the Worker."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from config_projects import toml_project
from edge_runtime import packages as packages_module
from edge_runtime.config import ConfigError, load_config
from edge_runtime.devserver import BindError
from edge_runtime.edge import Edge
from edge_runtime.packages import (PackageInstallError, WorkerPackages, ensure_installed, install_command,
                                   python_version_warning, read_packages)
from wrangler_like_cli import dev as dev_module

SIX = "six==1.17.0"  # pure Python, one module, no dependencies
MISSING = "edgewise-no-such-package-zq"

WORKER = """\
import six
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"{six.__version__} {six.__file__}")
"""


def pyproject(root: Path, text: str) -> Path:
    (root / "pyproject.toml").write_text(textwrap.dedent(text))
    return root


def with_dependencies(root: Path, *requirements: str, extra: str = "") -> Path:
    listed = ", ".join(f'"{req}"' for req in requirements)
    return pyproject(toml_project(root), f'[project]\nname = "w"\ndependencies = [{listed}]\n{extra}')


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """One real install of six from the package index, shared by the tests below: (project, folder, echoed)."""
    project = with_dependencies(tmp_path_factory.mktemp("worker"), SIX)
    (project / "src" / "entry.py").write_text(WORKER)
    echoed: list[str] = []
    folder = ensure_installed(read_packages(project), echoed.append)
    assert folder is not None
    return project, folder, echoed


def test_dependencies_are_read_from_pyproject_beside_the_config(tmp_path: Path) -> None:
    packages = read_packages(with_dependencies(tmp_path, "six>=1.16", "humanize[extra]; python_version >= '3'"))
    assert packages.requirements == ("six>=1.16", "humanize[extra]; python_version >= \"3\"")
    assert packages.pyproject == tmp_path / "pyproject.toml"
    assert packages.folder.parent == tmp_path / ".wrangler" / "python_modules"


def test_no_pyproject_means_nothing_to_install(tmp_path: Path) -> None:
    packages = read_packages(toml_project(tmp_path))
    assert packages.requirements == () and packages.pyproject is None
    assert ensure_installed(packages, pytest.fail) is None  # echoes nothing, runs no pip


def test_packages_edgewise_provides_or_already_has_are_skipped(tmp_path: Path) -> None:
    packaging_version = importlib.metadata.version("packaging")
    packages = read_packages(with_dependencies(
        tmp_path, "Workers_Runtime.SDK", "workers-py", "pyodide-py", "JS", "workers", "pyodide",
        f"packaging=={packaging_version}", "six", "colorama; sys_platform == 'no-such-platform'"))
    assert packages.requirements == ("six",)
    assert len(packages.skipped) == 7  # the marker-excluded one is neither installed nor listed


def test_a_version_edgewise_does_not_have_is_installed(tmp_path: Path) -> None:
    packages = read_packages(with_dependencies(tmp_path, "packaging<1"))
    assert packages.requirements == ("packaging<1",)


def test_the_cache_key_follows_the_list_not_its_order(tmp_path: Path) -> None:
    first = WorkerPackages(tmp_path, None, ("six", "humanize"))
    assert first.cache_key == WorkerPackages(tmp_path, None, ("humanize", "six")).cache_key
    assert first.cache_key != WorkerPackages(tmp_path, None, ("six",)).cache_key
    assert first.cache_key != WorkerPackages(tmp_path, None, ("six", "humanize"), allow_build=True).cache_key


def test_pip_is_this_interpreter_s_into_the_target_only(tmp_path: Path) -> None:
    command = install_command(WorkerPackages(tmp_path, None, ("six",)), tmp_path / "out")
    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    assert command[command.index("--target") + 1] == str(tmp_path / "out")
    assert command[-3:] == ["--only-binary", ":all:", "six"]  # wheels only, as pywrangler's default --no-build
    built = read_packages(with_dependencies(tmp_path, "six", extra="[tool.pywrangler]\nallow-build = true\n"))
    assert "--only-binary" not in install_command(built, tmp_path / "out")


def test_a_real_install_puts_the_package_in_the_worker_s_folder(installed: tuple[Path, Path, list[str]]) -> None:
    project, folder, echoed = installed
    assert folder.parent == project / ".wrangler" / "python_modules"
    assert (folder / "six.py").is_file() and (folder / "six-1.17.0.dist-info").is_dir()
    assert len(echoed) == 1 and echoed[0].startswith(f"Installing 1 package for the Worker: {SIX} (into ")
    environment = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    assert list(importlib.metadata.distributions(name="six", path=environment)) == []  # edgewise's env untouched
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]  # no partial folder left


def test_the_same_list_again_is_a_cache_hit(installed: tuple[Path, Path, list[str]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    project, folder, _ = installed
    marker = folder / "marker"
    marker.write_text("kept")

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip ran on a cache hit")

    monkeypatch.setattr(packages_module.subprocess, "run", no_pip)
    echoed: list[str] = []
    assert ensure_installed(read_packages(project), echoed.append) == folder
    assert echoed == [] and marker.read_text() == "kept"


async def test_a_worker_imports_its_installed_package(installed: tuple[Path, Path, list[str]]) -> None:
    project, folder, _ = installed
    edge = Edge(load_config(project), python_modules=folder)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door), base_url="http://edge") as client:
            reply = await client.get("/")
        assert reply.status_code == 200
        assert reply.text == f"1.17.0 {folder / 'six.py'}"
        assert all("six" not in pop.worker.local_module_names for pop in edge.pops)  # shared, as site-packages
    finally:
        await edge.aclose()


def test_a_package_that_does_not_exist_is_one_clear_error(tmp_path: Path) -> None:
    project = with_dependencies(tmp_path, MISSING)
    with pytest.raises(PackageInstallError) as caught:
        ensure_installed(read_packages(project), lambda line: None)
    message = str(caught.value)
    assert message.startswith(f"{project / 'pyproject.toml'}: could not install the Worker's packages ({MISSING})")
    assert f"No matching distribution found for {MISSING}" in message
    assert not (project / ".wrangler" / "python_modules").exists() or not any(
        (project / ".wrangler" / "python_modules").iterdir())  # nothing half-installed to be a cache hit later


def test_a_broken_pyproject_names_the_file(tmp_path: Path) -> None:
    project = pyproject(toml_project(tmp_path), "[project\ndependencies = [\"six\"]\n")
    with pytest.raises(ConfigError) as caught:
        read_packages(project)
    assert str(caught.value).startswith(str(project / "pyproject.toml"))
    assert "not valid TOML" in str(caught.value)


@pytest.mark.parametrize(("listed", "key"), [('"six"', "project.dependencies"),
                                             ('["six >>> 1"]', "project.dependencies[0]"),
                                             ('[3]', "project.dependencies[0]")])
def test_a_bad_dependency_list_names_the_key(tmp_path: Path, listed: str, key: str) -> None:
    project = pyproject(toml_project(tmp_path), f"[project]\ndependencies = {listed}\n")
    with pytest.raises(ConfigError) as caught:
        read_packages(project)
    assert caught.value.file == project / "pyproject.toml" and caught.value.key == key


def test_requirements_txt_is_refused_with_the_pyproject_lines_to_use(tmp_path: Path) -> None:
    project = toml_project(tmp_path)
    (project / "requirements.txt").write_text("six==1.17.0  # pinned\n\nhumanize\n")
    with pytest.raises(ConfigError) as caught:
        read_packages(project)
    assert caught.value.file == project / "requirements.txt"
    assert "no longer take their packages from requirements.txt" in caught.value.message
    assert caught.value.message.endswith('[project]\ndependencies = [\n  "six==1.17.0",\n  "humanize",\n]')


def test_requirements_txt_beside_a_pyproject_list_is_left_alone(tmp_path: Path) -> None:
    project = with_dependencies(tmp_path, "six")
    (project / "requirements.txt").write_text("humanize\n")
    assert read_packages(project).requirements == ("six",)


def test_requires_python_is_checked_against_the_interpreter(tmp_path: Path) -> None:
    packages = read_packages(with_dependencies(tmp_path, extra='requires-python = ">=3.12"\n'))
    assert python_version_warning(packages, "3.12.1") is None
    assert python_version_warning(packages, "3.11.7") == (
        "The Worker asks for Python >=3.12 (requires-python in pyproject.toml); edgewise runs it on 3.11.7: "
        "Cloudflare runs the Python its compatibility date picks, so test there too.")
    unreachable = read_packages(with_dependencies(tmp_path, extra='requires-python = ">=99"\n'))
    assert python_version_warning(unreachable).endswith(  # type: ignore[union-attr]
        f"runs it on {sys.version.split()[0]}: Cloudflare runs the Python its compatibility date picks, "
        "so test there too.")


def test_a_bad_requires_python_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read_packages(with_dependencies(tmp_path, extra='requires-python = "three"\n'))
    assert caught.value.key == "project.requires-python"


@pytest.fixture
def dev_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """``edgewise dev`` in-process, stopped where it would open its ports; yields what it got to, in order
    ("backend" when it started the AI backends, "edge" when it built the Edge, with the Worker loaded)."""
    steps: list[str] = []
    start_backend = dev_module._start_backend

    def record_backend(config: object, stack: object, *rest: object) -> object:
        steps.append("backend")
        return start_backend(config, stack, *rest)  # type: ignore[arg-type]

    def stop_at_listen(edge: Edge, host: str, port: int) -> None:
        steps.append(f"edge {edge.python_modules}")
        raise BindError("stopped by the test before listening")

    logger = logging.getLogger("edgewise")
    saved = (logger.handlers[:], logger.level, logger.propagate)  # dev points it at CliRunner's stdout
    monkeypatch.setattr(dev_module, "open_listeners", stop_at_listen)
    monkeypatch.setattr(dev_module, "_start_backend", record_backend)
    yield steps
    logger.handlers[:], logger.level, logger.propagate = saved


def run_dev(project: Path, *options: str) -> Result:
    result = CliRunner().invoke(dev_module.dev, [str(project), *options], prog_name="edgewise dev")
    return result


def test_edgewise_dev_installs_and_its_worker_imports_the_package(tmp_path: Path, dev_run: list[str]) -> None:
    project = with_dependencies(tmp_path, SIX)
    (project / "src" / "entry.py").write_text(WORKER)
    result = run_dev(project)
    assert "stopped by the test before listening" in result.output  # the Worker, importing six, loaded
    assert dev_run == ["backend", f"edge {read_packages(project).folder}"]
    assert " ".join(result.output.split()).count("Installing 1 package for the Worker: six==1.17.0") == 1
    again = run_dev(project)
    assert "Installing" not in again.output and len(dev_run) == 4  # cache hit


def test_edgewise_dev_stops_on_a_failed_install_before_anything_starts(tmp_path: Path, dev_run: list[str]) -> None:
    result = run_dev(with_dependencies(tmp_path, MISSING))
    assert result.exit_code == 1 and dev_run == []
    assert f"No matching distribution found for {MISSING}" in result.output


def test_edgewise_dev_no_install_skips_pip(tmp_path: Path, dev_run: list[str]) -> None:
    project = with_dependencies(tmp_path, MISSING)
    (project / "src" / "entry.py").write_text("import edgewise_no_such_package_zq\n")
    result = run_dev(project, "--no-install")
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and dev_run == ["backend"]  # the Worker's import fails without the package
    assert "No matching distribution" not in output and "Installing" not in output
    assert f"--no-install: the Worker's packages are not installed ({MISSING})" in output
    assert "No module named 'edgewise_no_such_package_zq'" in output


def test_edgewise_dev_warns_about_requires_python_and_still_runs(tmp_path: Path, dev_run: list[str]) -> None:
    project = with_dependencies(tmp_path, extra='requires-python = ">=99"\n')
    (project / "src" / "entry.py").write_text("")
    result = run_dev(project)
    assert dev_run == ["backend", "edge None"]
    assert " ".join(result.output.split()).count("The Worker asks for Python >=99") == 1
