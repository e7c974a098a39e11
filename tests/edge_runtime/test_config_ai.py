"""Tests for the AI parts of the config: [edgewise.models], [edgewise.backend], [[edgewise.backends]]."""

from __future__ import annotations

from pathlib import Path

import pytest

from config_projects import BASE_TOML, load_error, make_project, toml_project
from edge_runtime.config import BackendSpec, LocalBackendConfig, ModelSource, load_config
from gpu_backend.cluster.config import ClusterConfig, InstanceSpec

TINY = "@cf/edgewise/tiny-shakespeare"


def test_models_map_names_to_folders_and_builtins(tmp_path: Path) -> None:
    (tmp_path / "models" / "llama").mkdir(parents=True)
    extra = f"""\
        [edgewise.models]
        "@cf/meta/llama-3.1-8b-instruct" = "models/llama"
        "@cf/meta/llama-3.2-1b-instruct" = "{TINY}"
        "@cf/me/abs" = "{tmp_path / 'models'}"
    """
    models = load_config(toml_project(tmp_path, extra)).edgewise.models
    assert models == (
        ModelSource("@cf/meta/llama-3.1-8b-instruct", folder=(tmp_path / "models" / "llama").resolve()),
        ModelSource("@cf/meta/llama-3.2-1b-instruct", builtin=TINY),
        ModelSource("@cf/me/abs", folder=(tmp_path / "models").resolve()),
    )
    assert models[1].serve_argument == f"@cf/meta/llama-3.2-1b-instruct={TINY}"


def test_model_folder_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "config" / "weights").mkdir(parents=True)
    make_project(tmp_path, {"config/wrangler.toml": BASE_TOML.replace("src/", "../src/")
                            + '[edgewise.models]\n"@cf/a/b" = "./weights"\n'})  # fmt: skip
    config = load_config(tmp_path, config_path=tmp_path / "config" / "wrangler.toml")
    assert config.edgewise.models[0].folder == (tmp_path / "config" / "weights").resolve()


def test_missing_model_folder_is_named_with_both_options(tmp_path: Path) -> None:
    error = load_error(toml_project(tmp_path, '[edgewise.models]\n"@cf/a/b" = "models/nope"\n'))
    assert error.key == 'edgewise.models."@cf/a/b"'
    assert f'folder "{(tmp_path / "models" / "nope").resolve()}" does not exist' in error.message
    assert "Hugging Face model folder or a built-in model" in error.message and TINY in error.message


def test_model_source_that_is_a_file(tmp_path: Path) -> None:
    error = load_error(toml_project(tmp_path, '[edgewise.models]\n"@cf/a/b" = "wrangler.toml"\n'))
    assert "is a file, not a model folder" in error.message


def test_local_backend_table(tmp_path: Path) -> None:
    extra = """\
        [edgewise.backend]
        device = "cpu"
        dtype = "float32"
        port = 8123
        location = "fra"
        max_queue = 16
        ready_timeout_s = 30
    """
    backend = load_config(toml_project(tmp_path, extra)).edgewise.backend
    assert backend == LocalBackendConfig(device="cpu", dtype="float32", port=8123, location="FRA", max_queue=16,
                                         ready_timeout_s=30.0)  # fmt: skip
    assert load_config(toml_project(tmp_path)).edgewise.backend == LocalBackendConfig()
    assert LocalBackendConfig().port == 0 and LocalBackendConfig().ready_timeout_s == 120.0


def test_the_local_backend_cluster_as_one_table(tmp_path: Path) -> None:
    extra = """\
        [edgewise.backend.cluster]
        on_instance_loss = "recompute"
        [[edgewise.backend.cluster.instances]]
        role = "prefill"
        tp = 2
        [[edgewise.backend.cluster.instances]]
        role = "decode"
        pp = 2
        pp_layers = [3, 1]
        count = 2
    """
    cluster = load_config(toml_project(tmp_path, extra)).edgewise.backend.cluster_config()
    assert cluster == ClusterConfig.disaggregated(InstanceSpec(tp_size=2), InstanceSpec(pp_size=2, pp_layers=(3, 1)),
                                                  decode_instances=2, on_instance_loss="recompute")
    error = load_error(toml_project(tmp_path, "[edgewise.backend.cluster]\ninstances = [{ tp = 2, cout = 2 }]\n"))
    assert error.key == "edgewise.backend.cluster" and "instances[0] has no key 'cout'" in error.message
    error = load_error(toml_project(tmp_path, "[edgewise.backend]\ntp = 2\ncluster = { instances = [{ tp = 2 }] }\n"))
    assert error.key == "edgewise.backend.cluster" and "'tp' were both given" in error.message


def test_backend_location_takes_any_location_spec(tmp_path: Path) -> None:
    extra = """\
        [[edgewise.backends]]
        url = "http://a:1"
        location = "48.85,2.35"
        [[edgewise.backends]]
        url = "http://b:1"
        location = "gb"
    """
    backends = load_config(toml_project(tmp_path, extra)).edgewise.backends
    assert [spec.location for spec in backends] == ["48.85,2.35", "GB"]


def test_backend_token_stays_out_of_repr() -> None:
    assert "s3cret" not in repr(BackendSpec("http://h:1", token="s3cret"))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", False),  # no [ai] binding: nothing to serve
        ('[ai]\nbinding = "AI"\n', True),  # a binding and no backend: dev starts one
        ('[ai]\nbinding = "AI"\n[[edgewise.backends]]\nurl = "http://gpu:8000"\n', False),
        (f'[ai]\nbinding = "AI"\n[[edgewise.backends]]\nurl = "http://gpu:8000"\n'
         f'[edgewise.models]\n"@cf/a/b" = "{TINY}"\n', True),  # local models join the configured backends
    ],
    ids=["no binding", "binding only", "backends", "backends and models"],
)
def test_when_dev_starts_a_local_backend(tmp_path: Path, extra: str, expected: bool) -> None:
    assert load_config(toml_project(tmp_path, extra)).starts_local_backend is expected
