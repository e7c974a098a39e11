"""Which models the backend serves, from the CLI: `edgewise dev --model NAME=PATH` over [edgewise.models],
`strict_models` in [edgewise], and `edgewise backend serve --strict-models`, each reaching the command
or call that starts the service (captured here instead of loading models)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from edge_runtime.backend_process import BackendStartError
from gpu_backend.server import serve as service
from wrangler_like_cli import dev as dev_module
from wrangler_like_cli.main import cli

TINY = "@cf/edgewise/tiny-shakespeare"
CONFIG = """\
name = "w"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]
[ai]
binding = "AI"
[edgewise]
strict_models = {strict}
[edgewise.models]
"@cf/meta/llama-3.1-8b-instruct" = "@cf/edgewise/tiny-shakespeare"
"@cf/baai/bge-small-en-v1.5" = "@cf/sentence-transformers/all-minilm-l6-v2"
"""
WORKER = """\
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hi")
"""


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``dev`` points the "edgewise" logger at CliRunner's stdout, which is closed after the call."""
    logger = logging.getLogger("edgewise")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The command lines `edgewise dev` starts its backend with; the start then fails, ending dev."""
    commands: list[list[str]] = []

    def start(command: list[str], ready_timeout_s: float) -> None:
        commands.append(list(command))
        raise BackendStartError("captured")

    monkeypatch.setattr(dev_module.BackendProcess, "start", start)
    return commands


def project(root: Path, strict: bool = False) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "entry.py").write_text(WORKER)
    (root / "wrangler.toml").write_text(CONFIG.format(strict="true" if strict else "false"))
    return root


def dev(*args: str) -> Result:
    return CliRunner().invoke(cli, ["dev", *args, "--no-reload"], prog_name="edgewise")


def models_of(command: list[str]) -> dict[str, str]:
    given = [command[i + 1] for i, arg in enumerate(command) if arg == "--model"]
    return dict(spec.partition("=")[::2] for spec in given)


def test_dev_model_overrides_the_config_for_the_run(started: list[list[str]], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path / "w")
    (tmp_path / "checkpoint").mkdir()
    monkeypatch.chdir(tmp_path)  # a relative PATH is the working directory's, as any CLI path
    result = dev(str(root), "--model", "@cf/meta/llama-3.1-8b-instruct=checkpoint",
                 "-m", f"@cf/openai/gpt-oss-120b={TINY}")
    assert result.exit_code == 1 and "captured" in result.output
    (command,) = started
    models = models_of(command)
    assert models["@cf/meta/llama-3.1-8b-instruct"] == str(tmp_path / "checkpoint")  # the flag wins
    assert models["@cf/openai/gpt-oss-120b"] == TINY
    assert models["@cf/baai/bge-small-en-v1.5"] == "@cf/sentence-transformers/all-minilm-l6-v2"  # kept
    assert "--strict-models" not in command


def test_strict_models_in_the_config_reaches_the_backend(started: list[list[str]], tmp_path: Path) -> None:
    assert dev(str(project(tmp_path / "w", strict=True))).exit_code == 1
    assert "--strict-models" in started[0]


@pytest.mark.parametrize(("spec", "message"), [
    ("@cf/x/y", "is not NAME=PATH"),
    ("=@cf/edgewise/tiny-shakespeare", "is not NAME=PATH"),
    ("@cf/x/y=no-such-folder", 'the folder "'),
    ("@cf/x/y=@cf/edgewise/tiny-shakespear", "did you mean '@cf/edgewise/tiny-shakespeare'"),
])
def test_a_bad_dev_model_is_refused_before_anything_starts(started: list[list[str]], tmp_path: Path, spec: str,
                                                           message: str) -> None:
    result = dev(str(project(tmp_path / "w")), "--model", spec)
    assert result.exit_code == 2 and "--model" in result.output and message in result.output
    assert not started


def test_strict_models_must_be_a_boolean(tmp_path: Path) -> None:
    root = project(tmp_path / "w")
    (root / "wrangler.toml").write_text(CONFIG.format(strict='"yes"'))
    result = dev(str(root))
    assert result.exit_code == 1 and "'edgewise.strict_models' must be" in result.output


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(service, "serve", lambda models, **options: calls.append(options))
    return calls


@pytest.mark.parametrize(("flags", "strict"), [((), False), (("--strict-models",), True)])
def test_backend_serve_falls_back_unless_strict(served: list[dict[str, Any]], flags: tuple[str, ...],
                                                strict: bool) -> None:
    result = CliRunner().invoke(cli, ["backend", "serve", "--device", "cpu", "--token", "t", *flags])
    assert result.exit_code == 0, result.output
    assert served[-1]["strict_models"] is strict
