"""Declared bindings: read from the config whatever their kind, opened once per run and shared by
every PoP, and those edgewise does not run announced at start and refused when touched."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from config_projects import BASE_TOML, load_error, make_project, toml_project
from edge_runtime.bindings import BindingNotSupportedError, OpenBindings, StateDir, UnsupportedBinding
from edge_runtime.config import BindingSpec, load_config
from edge_runtime.edge import Edge

DECLARED = """\
    [[kv_namespaces]]
    binding = "CACHE"
    id = "abc123"

    [[d1_databases]]
    binding = "DB"
    database_name = "notes"
    database_id = "0000"

    [[r2_buckets]]
    binding = "FILES"
    bucket_name = "files"

    [[durable_objects.bindings]]
    name = "ROOMS"
    class_name = "Room"

    [[queues.producers]]
    binding = "JOBS"
    queue = "jobs"

    [browser]
    binding = "BROWSER"

    [assets]
    directory = "public"
"""


def test_every_kind_of_binding_is_read_with_its_settings(tmp_path: Path) -> None:
    bindings = load_config(toml_project(tmp_path, DECLARED)).bindings
    assert [(spec.kind, spec.name) for spec in bindings] == [
        ("kv_namespaces", "CACHE"), ("d1_databases", "DB"), ("r2_buckets", "FILES"), ("assets", None),
        ("browser", "BROWSER"), ("durable_objects", "ROOMS"), ("queues", "JOBS")]
    assert bindings[0].settings["id"] == "abc123" and bindings[1].settings["database_name"] == "notes"
    assert load_config(toml_project(tmp_path, DECLARED)).warnings == ()  # none of them is an unknown key


def test_bindings_are_not_inherited_by_environments(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"wrangler.toml": BASE_TOML + DECLARED.replace("    ", "") + """
[env.staging]
[[env.staging.kv_namespaces]]
binding = "CACHE"
id = "staging-id"
"""})
    config = load_config(project, env_name="staging")
    assert [(spec.kind, spec.name) for spec in config.bindings] == [("kv_namespaces", "CACHE"), ("assets", None)]
    assert config.bindings[0].settings["id"] == "staging-id"
    assert any('"d1_databases" exists at the top level, but not on "env.staging"' in w for w in config.warnings)


@pytest.mark.parametrize(("extra", "key", "message"), [
    ('[[kv_namespaces]]\nid = "x"\n', "kv_namespaces[0].binding", "is required"),
    ('[[durable_objects.bindings]]\nclass_name = "Room"\n', "durable_objects.bindings[0].name", "is required"),
    ("[browser]\n", "browser.binding", "is required"),
    ('kv_namespaces = "CACHE"\n', "kv_namespaces", "array"),
    ('[[kv_namespaces]]\nbinding = "MY-KV"\nid = "x"\n', "kv_namespaces", "binding names must be names"),
    ('[vars]\nCACHE = "1"\n[[kv_namespaces]]\nbinding = "CACHE"\nid = "x"\n', "kv_namespaces",
     "'CACHE' is also a var"),
    ('[[kv_namespaces]]\nbinding = "X"\nid = "1"\n[[r2_buckets]]\nbinding = "X"\nbucket_name = "b"\n',
     "r2_buckets", "'X' is also a kv_namespaces binding"),
])
def test_a_binding_that_cannot_be_read_names_its_key(tmp_path: Path, extra: str, key: str, message: str) -> None:
    error = load_error(toml_project(tmp_path, extra))
    assert error.key == key and message in error.message


def test_a_binding_of_a_kind_not_run_here_is_announced_and_refused_when_touched(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = BindingSpec("browser", "BROWSER", {"binding": "BROWSER"})
    with caplog.at_level(logging.WARNING, logger="edgewise.bindings"):
        declared = OpenBindings((spec,), StateDir(tmp_path))
        declared.announce()
    assert isinstance(declared.by_name["BROWSER"], UnsupportedBinding)
    assert [record.getMessage() for record in caplog.records] == [
        "env.BROWSER (browser) is declared, but edgewise does not run browser yet: using it raises an error"]
    with pytest.raises(BindingNotSupportedError, match="env.BROWSER is a browser binding: it is declared"):
        declared.by_name["BROWSER"].fetch


WORKER = """\
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        try:
            await self.env.JOBS.send("hello")
        except Exception as error:
            return Response(f"{type(error).__name__}: {error}", status=500)
        return Response("sent")
"""


async def test_a_worker_touching_an_unsupported_binding_gets_the_error(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"wrangler.toml": BASE_TOML + '[[hyperdrive]]\nbinding = "JOBS"\n'
                                                                  'id = "db"\n', "src/entry.py": WORKER})
    edge = Edge(load_config(project))
    try:
        transport = httpx.ASGITransport(app=edge.front_door)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            reply = await client.get("/")
        assert reply.status_code == 500
        assert reply.text.startswith("BindingNotSupportedError: env.JOBS is a hyperdrive binding")
    finally:
        await edge.aclose()


def test_state_lives_under_wrangler_state_unless_persisted_elsewhere(tmp_path: Path) -> None:
    config = load_config(toml_project(tmp_path))
    assert StateDir.for_config(config).root == (tmp_path / ".wrangler" / "state" / "v3").resolve()
    assert StateDir.for_config(config, tmp_path / "elsewhere").root == (tmp_path / "elsewhere" / "v3").resolve()
    assert StateDir(tmp_path).folder("kv", "ns").is_dir()
