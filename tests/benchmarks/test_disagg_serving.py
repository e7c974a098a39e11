"""benchmarks/disagg_serving.py: layouts, the word-level tokenizer and the comparison, on the CPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from gpu_backend.cluster.config import ClusterConfig

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "disagg_serving.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmarks_disagg_serving", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


script = load_script()


def test_layouts_name_their_instances_and_gpus() -> None:
    assert script.cluster_config("colocated:1") == (None, 1)
    cluster, gpus = script.cluster_config("colocated:2")
    assert cluster == ClusterConfig.colocated(instances=2) and gpus == 2
    cluster, gpus = script.cluster_config("pd:1+2")
    assert cluster == ClusterConfig.disaggregated(prefill_instances=1, decode_instances=2) and gpus == 3
    with pytest.raises(SystemExit, match="colocated:N or pd:P"):
        script.cluster_config("replicas:2")


def test_every_id_is_a_word_and_round_trips(tmp_path: Path) -> None:
    script.word_tokenizer(tmp_path, 1000)
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tokenizer.encode("t5 t999 t0").ids == [5, 999, 0]
    assert tokenizer.decode([5, 999, 0]) == "t5 t999 t0"
    corpus = script.random_corpus(tmp_path / "corpus.txt", 50, 1000, seed=3).read_text().split()
    assert len(corpus) == 50 and all(0 < int(word[1:]) < 1000 for word in corpus)


def row(rate: float, ttft_p90: float, itl_p50: float, itl_p99: float, goodput_per_gpu: float) -> dict:
    return {"request_rate": rate, "ttft_ms": {"p90": ttft_p90}, "itl_ms": {"p50": itl_p50, "p99": itl_p99},
            "goodput_req_s_per_gpu": goodput_per_gpu}


def test_the_comparison_is_taken_where_colocated_ttft_reaches_the_slo() -> None:
    colocated = {"results": [row(2, 100, 5, 40, 1.0), row(4, 600, 6, 60, 1.5), row(8, 3000, 8, 90, 1.2)]}
    disaggregated = {"results": [row(2, 120, 4, 8, 0.9), row(4, 150, 4, 10, 2.0), row(8, 400, 5, 12, 3.0)]}
    comparison = script.compare(colocated, disaggregated, slo_ttft_ms=500)
    assert comparison["rate"] == 4
    assert comparison["itl_p50_ms"]["colocated_over_disaggregated"] == pytest.approx(1.5)
    assert comparison["itl_p99_ms"]["colocated_over_disaggregated"] == pytest.approx(6.0)
    assert comparison["goodput_per_gpu"]["disaggregated_over_colocated"] == pytest.approx(2.0)
    never = script.compare({"results": [row(2, 100, 5, 40, 1.0)]}, disaggregated, slo_ttft_ms=500)
    assert never["rate"] is None and "itl_p50_ms" not in never
