"""``edgewise backend serve``'s cluster: the shorthand flags and ``--cluster`` give one ClusterConfig,
which is what the service is started with (captured here instead of loading models); and where its
async batches are kept (``--batch-dir``, ``--batch-retention``), which ``edgewise dev`` sets to its
project's state folder."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from edge_runtime.backend_process import serve_command
from edge_runtime.config import EdgewiseConfig
from gpu_backend.cluster.config import ClusterConfig, InstanceSpec
from gpu_backend.server.batches import DEFAULT_RETENTION_S, BatchConfig
from gpu_backend.server import serve as service
from wrangler_like_cli.main import cli


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(service, "serve", lambda models, **options: calls.append(options))
    return calls


def serve(*args: str) -> Result:
    return CliRunner().invoke(cli, ["backend", "serve", "--device", "cpu", "--token", "t", *args], prog_name="edgewise")


def cluster_of(served: list[dict[str, Any]], *args: str) -> ClusterConfig:
    result = serve(*args)
    assert result.exit_code == 0, result.output
    return served[-1]["cluster"]


def test_no_flags_is_one_colocated_instance(served: list[dict[str, Any]]) -> None:
    assert cluster_of(served) == ClusterConfig()


def test_the_shorthand_flags_stand_for_a_cluster_config(served: list[dict[str, Any]]) -> None:
    assert cluster_of(served, "--tp", "2", "--pp", "2", "--pp-layers", "3,1", "--instances", "2") == \
        ClusterConfig.colocated(2, 2, (3, 1), instances=2)
    flags = ["--prefill-instances", "1", "--prefill-tp", "2", "--decode-instances", "2", "--decode-pp", "2",
             "--instance-timeout", "10", "--heartbeat-timeout", "2.5", "--on-instance-loss", "recompute",
             "--instance-restarts", "1"]
    assert cluster_of(served, *flags) == ClusterConfig.disaggregated(
        InstanceSpec(tp_size=2), InstanceSpec(pp_size=2), prefill_instances=1, decode_instances=2,
        instance_timeout_s=10, heartbeat_timeout_s=2.5, on_instance_loss="recompute", instance_restarts=1)


def test_cluster_takes_json_or_a_file(served: list[dict[str, Any]], tmp_path: Path) -> None:
    config = {"instances": [{"role": "prefill"}, {"role": "decode", "tp": 2, "count": 2}],
              "on_instance_loss": "recompute"}
    expected = ClusterConfig.disaggregated(InstanceSpec(), InstanceSpec(tp_size=2), decode_instances=2,
                                           on_instance_loss="recompute")
    assert cluster_of(served, "--cluster", json.dumps(config)) == expected
    (tmp_path / "cluster.json").write_text(json.dumps(expected.to_json()))
    assert cluster_of(served, "--cluster", f"@{tmp_path / 'cluster.json'}") == expected


@pytest.mark.parametrize(("args", "message"), [
    (["--cluster", '{"instances": []}', "--tp", "2"], "--cluster and --tp were both given"),
    (["--cluster", '{"instances": [{"tp": 0}]}'], "instances[0]: an instance's tp must be"),
    (["--cluster", "{nope"], "the cluster config is not valid JSON"),
    (["--cluster", "@/no/such/cluster.json"], "cannot read /no/such/cluster.json"),
    (["--decode-tp", "2"], "--decode-tp shapes prefill or decode instances"),
    (["--prefill-instances", "1"], "--prefill-instances and --decode-instances go together"),
    (["--tp", "2", "--prefill-instances", "1", "--decode-instances", "1"], "--tp shapes colocated instances"),
    (["--pp", "2", "--pp-layers", "4"], "pp_layers gives 1 stages but pp is 2"),
])
def test_a_cluster_that_cannot_run_is_refused_before_anything_loads(served: list[dict[str, Any]], args: list[str],
                                                                   message: str) -> None:
    result = serve(*args)
    assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
    assert served == []


# -- async batches ------------------------------------------------------------------------------


def test_batch_dir_and_retention_reach_the_service(served: list[dict[str, Any]], tmp_path: Path) -> None:
    result = serve("--batch-dir", str(tmp_path), "--batch-retention", "30m")
    assert result.exit_code == 0, result.output
    assert served[-1]["batches"] == BatchConfig(tmp_path, 1800.0)


def test_by_default_batches_are_kept_a_day_under_the_state_folder(served: list[dict[str, Any]], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert serve().exit_code == 0
    assert served[-1]["batches"] == BatchConfig(tmp_path / "edgewise" / "batches", DEFAULT_RETENTION_S)


def test_a_bad_retention_is_refused_before_anything_loads(served: list[dict[str, Any]]) -> None:
    result = serve("--batch-retention", "soon")
    assert result.exit_code != 0 and not served
    assert "--batch-retention" in result.output and "24h" in result.output


def test_edgewise_dev_passes_the_batch_folder(tmp_path: Path, served: list[dict[str, Any]]) -> None:
    command = serve_command(EdgewiseConfig(), tmp_path / "state" / "ai")
    assert command[command.index("--batch-dir") + 1] == str(tmp_path / "state" / "ai")
    assert "--batch-dir" not in serve_command(EdgewiseConfig())
    start = command.index("serve") + 1
    result = serve(*command[start:])  # the real CLI takes it
    assert result.exit_code == 0, result.output
    assert served[-1]["batches"].folder == tmp_path / "state" / "ai"


def test_edgewise_dev_keeps_batches_under_the_projects_state_folder(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from wrangler_like_cli import dev as dev_module
    from edge_runtime.config import load_config

    (tmp_path / "entry.py").write_text("")
    (tmp_path / "wrangler.toml").write_text('name = "w"\nmain = "entry.py"\ncompatibility_date = "2025-11-02"\n'
                                            '[ai]\nbinding = "AI"\n')
    commands: list[list[str]] = []

    def start(command: list[str], ready_timeout_s: float) -> Any:
        commands.append(command)
        raise dev_module.BackendStartError("stopped by the test")

    monkeypatch.setattr(dev_module.BackendProcess, "start", start)
    config = load_config(tmp_path, None, None, {})
    for persist_to, expected in [(None, tmp_path / ".wrangler" / "state" / "v3" / "ai" / "batches"),
                                 (tmp_path / "kept", tmp_path / "kept" / "v3" / "ai" / "batches")]:
        with pytest.raises(dev_module.BackendStartError):
            dev_module._start_backend(config, contextlib.ExitStack(), persist_to)
        assert commands[-1][commands[-1].index("--batch-dir") + 1] == str(expected.resolve())


# -- compressed checkpoints ----------------------------------------------------------------------


@pytest.mark.parametrize(("args", "held"), [([], "auto"),
                                            (["--compressed-weights", "decode-at-load"], "decode_at_load"),
                                            (["--compressed-weights", "kernel"], "kernel")])
def test_compressed_weights_reach_the_engines(served: list[dict[str, Any]], args: list[str], held: str) -> None:
    result = serve(*args)
    assert result.exit_code == 0, result.output
    assert served[-1]["compressed_weights"] == held


def test_an_unknown_way_to_hold_compressed_weights_is_refused(served: list[dict[str, Any]]) -> None:
    result = serve("--compressed-weights", "lazy")
    assert result.exit_code == 2 and "auto" in result.output and served == []
