"""ClusterConfig: the builders, the JSON form both ways, and the clusters that cannot run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpu_backend.cluster.config import ClusterConfig, InstanceSpec

PREFILL_2_DECODE_1 = ClusterConfig.disaggregated(InstanceSpec(tp_size=2), InstanceSpec(pp_size=2, pp_layers=(3, 1)),
                                                 prefill_instances=2, on_instance_loss="recompute")


def test_the_builders_lay_instances_out_in_rank_order() -> None:
    assert ClusterConfig() == ClusterConfig.colocated() and ClusterConfig().world_size == 1
    assert not ClusterConfig().is_sharded and not ClusterConfig().is_disaggregated
    replicas = ClusterConfig.colocated(2, 2, instances=3)
    assert replicas.instances == (InstanceSpec("colocated", 2, 2),) * 3 and replicas.world_size == 12
    assert [spec.role for spec in PREFILL_2_DECODE_1.instances] == ["prefill", "prefill", "decode"]
    assert PREFILL_2_DECODE_1.world_size == 6 and PREFILL_2_DECODE_1.is_disaggregated
    assert PREFILL_2_DECODE_1.describe() == "2 x prefill tp2 pp1 + 1 x decode tp1 pp2"


@pytest.mark.parametrize("config", [ClusterConfig(), ClusterConfig.colocated(4, instances=2, instance_restarts=0),
                                    PREFILL_2_DECODE_1,
                                    ClusterConfig((InstanceSpec(tp_size=2), InstanceSpec(), InstanceSpec(tp_size=2)),
                                                  heartbeat_timeout_s=0.5, instance_timeout_s=7.5)])
def test_json_round_trips(config: ClusterConfig) -> None:
    text = json.dumps(config.to_json())
    assert ClusterConfig.from_json(text) == config and ClusterConfig.from_json(json.loads(text)) == config


def test_equal_neighbours_are_written_once_with_a_count() -> None:
    assert PREFILL_2_DECODE_1.to_json()["instances"] == [
        {"role": "prefill", "tp": 2, "pp": 1, "count": 2}, {"role": "decode", "tp": 1, "pp": 2, "pp_layers": [3, 1]}]


def test_missing_keys_take_the_defaults() -> None:
    assert ClusterConfig.from_json("{}") == ClusterConfig()
    assert ClusterConfig.from_json('{"instances": [{"tp": 2}]}') == ClusterConfig.colocated(2)


@pytest.mark.parametrize(("text", "message"), [
    ("[]", "must be an object, not list"),
    ("{", "not valid JSON"),
    ('{"instances": {}}', "'instances' must be a non-empty list"),
    ('{"instances": []}', "'instances' must be a non-empty list"),
    ('{"instances": [2]}', r"instances\[0\] must be an object"),
    ('{"instances": [{"tp": 2, "cout": 2}]}', r"instances\[0\] has no key 'cout'"),
    ('{"instances": [{}, {"tp": 0}]}', r"instances\[1\]: an instance's tp must be a whole number of at least 1"),
    ('{"instances": [{"pp": 1.5}]}', "pp must be a whole number"),
    ('{"instances": [{"count": 0}]}', r"instances\[0\].count must be a whole number of at least 1"),
    ('{"instances": [{"pp": 2, "pp_layers": [4]}]}', "pp_layers gives 1 stages but pp is 2"),
    ('{"instances": [{"pp_layers": 4}]}', "pp_layers must be a list"),
    ('{"instances": [{"role": "router"}]}', "role is one of colocated, prefill, decode, not 'router'"),
    ('{"instances": [{"role": "prefill"}]}', "at least one prefill and one decode instance"),
    ('{"instances": [{}, {"role": "decode"}]}', "cannot mix colocated instances"),
    ('{"on_instance_loss": "retry"}', "on_instance_loss is error or recompute"),
    ('{"instance_timeout_s": 0}', "instance_timeout_s must be a positive number"),
    ('{"heartbeat_timeout_s": "5"}', "heartbeat_timeout_s must be a positive number"),
    ('{"instance_restarts": -1}', "instance_restarts must be a whole number of at least 0"),
    ('{"restarts": 1}', "has no key 'restarts'"),
])
def test_a_cluster_that_cannot_run_names_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClusterConfig.from_json(text)


def test_the_shorthands_name_what_the_user_wrote() -> None:
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    assert ClusterConfig.from_shorthands(tp=2, instances=2) == ClusterConfig.colocated(2, instances=2)
    assert ClusterConfig.from_shorthands(prefill_instances=1, decode_instances=1, decode_tp=2) == \
        ClusterConfig.disaggregated(decode=InstanceSpec(tp_size=2))
    with pytest.raises(ValueError, match="--pp-layers shapes colocated instances"):
        ClusterConfig.from_shorthands(pp_layers=(2,), prefill_instances=1, decode_instances=1, spell=flag)
    with pytest.raises(ValueError, match="prefill_pp shapes prefill or decode instances"):
        ClusterConfig.from_shorthands(prefill_pp=2)


def test_importing_it_loads_no_torch() -> None:
    """The dev edge builds and checks the config while reading wrangler.toml, before any model."""
    code = "import sys, gpu_backend.cluster.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
