"""The ``edgewise`` CLI in-process (click's CliRunner): help, init templates, and dev's refusals to start."""

from __future__ import annotations

import datetime
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner, Result

from edge_runtime.config import load_config
from edge_runtime.edge import Edge
from wrangler_like_cli.dev import exposure_warnings
from wrangler_like_cli.init import TEMPLATES
from wrangler_like_cli.main import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VALID_CONFIG = """\
name = "w"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]
"""
HELLO_WORKER = """\
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


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="edgewise")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def make_project(root: Path, config: str, entry: str | None = HELLO_WORKER) -> Path:
    root.mkdir()
    (root / "wrangler.toml").write_text(config)
    if entry is not None:
        (root / "src").mkdir()
        (root / "src" / "entry.py").write_text(entry)
    return root


# --- version and help ---------------------------------------------------------------------------


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.startswith("edgewise, version ")


def test_group_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("init", "dev", "tail"):
        assert name in result.output


@pytest.mark.parametrize("name", ["init", "dev", "tail"])
def test_command_help_mentions_every_option(name: str) -> None:
    command = cli.commands[name]
    result = invoke(name, "--help")
    assert result.exit_code == 0
    assert f"Usage: edgewise {name}" in result.output
    options = [param for param in command.params if isinstance(param, click.Option)]
    assert options
    for option in options:
        for flag in (*option.opts, *option.secondary_opts):
            assert flag in result.output, f"{name} --help does not mention {flag}"


# --- init ---------------------------------------------------------------------------------------


async def get(edge: Edge, path: str = "/") -> httpx.Response:
    transport = httpx.ASGITransport(app=edge.front_door)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await client.get(path)


@pytest.mark.parametrize("template", TEMPLATES)
async def test_init_creates_a_loadable_project(tmp_path: Path, template: str) -> None:
    result = invoke("init", "my-worker", "--template", template, "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    project = tmp_path / "my-worker"
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()) == [
        "src/entry.py", "wrangler.toml"]
    assert all("{{" not in p.read_text() for p in project.rglob("*") if p.is_file())

    config = load_config(project)
    assert config.name == "my-worker"
    assert config.main == project / "src" / "entry.py"
    assert config.compatibility_date == datetime.date.today().isoformat()
    assert "python_workers" in config.compatibility_flags
    assert config.warnings == ()
    if template == "ai-chat":  # needs a backend: the same Worker runs end to end in tests/e2e/test_examples_ai.py
        assert config.ai_binding == "AI"
        assert [model.name for model in config.edgewise.models] == ["@cf/meta/llama-3.1-8b-instruct"]
        compile(config.main.read_text(), str(config.main), "exec")
        return

    response = await get(Edge(config))
    if template == "hello":
        assert response.status_code == 200
        assert response.json()["message"] == "Hello from my-worker"
        assert response.json()["colo"] == "DFW"
    elif template == "websocket":
        assert response.status_code == 426
    elif template == "asgi":
        assert response.status_code == 200
        assert response.json() == {"worker": "my-worker", "path": "/"}


def test_init_prints_next_steps(tmp_path: Path) -> None:
    result = invoke("init", "next-steps", "--dir", str(tmp_path))
    assert result.exit_code == 0
    assert "edgewise dev" in result.output
    assert "wrangler.toml" in result.output


@pytest.mark.parametrize("name", ["Bad_Name", "dots.in.name", "has space", "x" * 64])
def test_init_rejects_an_invalid_name(tmp_path: Path, name: str) -> None:
    result = invoke("init", name, "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert "is not a valid Worker name" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_init_refuses_a_non_empty_target(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    result = invoke("init", "taken", "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert "already exists and is not empty" in result.stderr
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_init_rejects_an_unknown_template(tmp_path: Path) -> None:
    result = invoke("init", "w", "--template", "nope", "--dir", str(tmp_path))
    assert result.exit_code == 2
    assert "Invalid value for '--template'" in result.output


# --- dev refuses to start, with one message and no open port -------------------------------------


BROKEN_PROJECTS = {
    "malformed-toml": (VALID_CONFIG + "[vars\nX = 1\n", HELLO_WORKER, ["wrangler.toml", "is not valid TOML"]),
    "main-key-missing": (VALID_CONFIG.replace('main = "src/entry.py"\n', ""), HELLO_WORKER,
                         ["wrangler.toml", "'main' is required"]),
    "main-file-missing": (VALID_CONFIG, None, ["wrangler.toml", "'main'", "src/entry.py", "does not exist"]),
    "import-raises": (VALID_CONFIG, "raise RuntimeError('boom at import')\n",
                      ["entry.py", "raised while being imported", "RuntimeError: boom at import"]),
}


@pytest.mark.parametrize("case", BROKEN_PROJECTS)
def test_dev_fails_with_one_message_naming_the_file(tmp_path: Path, case: str) -> None:
    config, entry, expected = BROKEN_PROJECTS[case]
    project = make_project(tmp_path / case, config, entry)
    port = free_port()
    result = invoke("dev", str(project), "--port", str(port), "--no-reload")
    assert result.exit_code == 1
    assert result.stderr.count("[ERROR]") == 1
    for text in expected:
        assert text in result.stderr
    assert "Ready on" not in result.output
    assert not is_listening(port)


def test_dev_rejects_an_unknown_pop() -> None:
    port = free_port()
    result = invoke("dev", str(EXAMPLES / "hello"), "--pops", "XXX", "--port", str(port))
    assert result.exit_code == 2
    assert "Invalid value for --pops" in result.output
    assert "'XXX'" in result.output
    assert not is_listening(port)


@pytest.mark.parametrize("value, message", [("{not json", "not JSON"), ("[1, 2]", "JSON object")])
def test_dev_rejects_a_malformed_cf(value: str, message: str) -> None:
    result = invoke("dev", str(EXAMPLES / "hello"), "--cf", value)
    assert result.exit_code == 2
    assert "--cf" in result.output and message in result.output


def test_dev_rejects_a_malformed_var() -> None:
    result = invoke("dev", str(EXAMPLES / "hello"), "--var", "NOCOLON")
    assert result.exit_code == 2
    assert "is not KEY:VALUE" in result.output


def test_dev_reports_a_taken_port(tmp_path: Path) -> None:
    project = make_project(tmp_path / "w", VALID_CONFIG)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke("dev", str(project), "--port", str(port), "--no-reload")
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "[edgewise] pops" in result.stderr  # config tables in messages are printed, not eaten as markup


@pytest.mark.parametrize("host, exposed", [("127.0.0.1", False), ("localhost", False), ("127.0.0.2", False),
                                           ("::1", False), ("0.0.0.0", True), ("::", True),
                                           ("192.168.1.20", True), ("devbox.lan", True)])
def test_dev_warns_when_listening_beyond_this_machine(host: str, exposed: bool) -> None:
    warnings = exposure_warnings(host)
    assert bool(warnings) == exposed
    if exposed:
        [warning] = warnings
        assert f"Listening on {host}" in warning and "edgewise tail" in warning and "--ip 127.0.0.1" in warning
