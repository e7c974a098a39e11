"""benchmarks/serving.py: statistics checked by hand, failures on fake streams, short runs on a real backend."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.server.background import local_backend

SHAKESPEARE = "@cf/edgewise/tiny-shakespeare"
OPTIONS = {"device": "cpu", "dtype": "float32"}
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serving.py"


def load_script() -> ModuleType:
    """benchmarks/ is not a package: the script is loaded from its path."""
    spec = importlib.util.spec_from_file_location("benchmarks_serving", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


serving = load_script()
Result = serving.RequestResult


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert serving.percentile(values, 50) == pytest.approx(2.5)
    assert serving.percentile(values, 90) == pytest.approx(3.7)  # rank 2.7: 3 + 0.7 * (4 - 3)
    assert serving.percentile(values, 99) == pytest.approx(3.97)
    assert serving.percentile(values, 0) == 1.0 and serving.percentile(values, 100) == 4.0
    assert serving.percentile([7.0], 99) == 7.0
    assert serving.percentile([], 50) is None


def test_describe_reports_milliseconds() -> None:
    summary = serving.describe([0.001, 0.002, 0.003])
    assert summary["mean"] == pytest.approx(2.0) and summary["p50"] == pytest.approx(2.0)
    assert summary["p90"] == pytest.approx(2.8) and summary["p99"] == pytest.approx(2.98) and summary["n"] == 3
    assert serving.describe([]) == {"mean": None, "p50": None, "p90": None, "p99": None, "n": 0}


def test_inter_token_latencies_are_every_gap() -> None:
    assert serving.inter_token_latencies([0.10, 0.15, 0.30, 0.31]) == pytest.approx([0.05, 0.15, 0.01])
    assert serving.inter_token_latencies([0.2]) == [] and serving.inter_token_latencies([]) == []


def test_time_per_output_token_leaves_out_the_first() -> None:
    assert serving.time_per_output_token(0.1, 0.5, 5) == pytest.approx(0.1)
    assert serving.time_per_output_token(0.1, 0.1, 1) is None


def test_goodput_counts_requests_within_both_slos() -> None:
    results = [
        Result(10, ok=True, ttft_s=0.2, e2e_s=0.2 + 9 * 0.020, output_tokens=10),  # 20 ms TPOT: meets
        Result(10, ok=True, ttft_s=0.6, e2e_s=0.6 + 9 * 0.010, output_tokens=10),  # TTFT 600 ms: misses
        Result(10, ok=True, ttft_s=0.1, e2e_s=0.1 + 9 * 0.040, output_tokens=10),  # TPOT 40 ms: misses
        Result(10, ok=False, error="HTTP 429", ttft_s=0.0, e2e_s=0.0),  # failed: never counts
        Result(1, ok=True, ttft_s=0.1, e2e_s=0.1, output_tokens=1),  # one token: no TPOT to miss
    ]
    assert serving.goodput(results, 2.0, slo_ttft_ms=500, slo_tpot_ms=30) == pytest.approx(1.0)
    assert serving.goodput(results, 2.0, slo_ttft_ms=1000, slo_tpot_ms=50) == pytest.approx(2.0)


def test_summarize_rate_counts_failures_by_reason() -> None:
    results = [Result(3, ok=True, ttft_s=0.1, e2e_s=0.3, output_tokens=3, prompt_tokens=5,
                      token_times_s=[0.1, 0.2, 0.3]),
               Result(4, ok=True, ttft_s=0.2, e2e_s=0.5, output_tokens=2, prompt_tokens=6, token_times_s=[0.2, 0.5]),
               Result(3, error="HTTP 403", detail="denied"), Result(3, error="HTTP 403", detail="denied"),
               Result(3, error="client timeout", detail="slow")]
    args = argparse.Namespace(slo_ttft_ms=500, slo_tpot_ms=150, gpus=2)  # TPOTs are 100 and 300 ms
    summary = serving.summarize_rate(float("inf"), results, 2.0, args)
    assert summary["request_rate"] == "inf" and (summary["completed"], summary["failed"]) == (2, 3)
    assert summary["failures"] == {"HTTP 403": 2, "client timeout": 1}
    assert summary["failure_examples"] == ["denied", "slow"]
    assert summary["short_outputs"] == 1  # asked for 4, got 2
    assert summary["request_throughput"] == pytest.approx(1.0)
    assert summary["output_throughput_tok_s"] == pytest.approx(2.5) and summary["total_input_tokens"] == 11
    assert summary["itl_ms"]["n"] == 3 and summary["itl_ms"]["p50"] == pytest.approx(100.0)
    assert summary["tpot_ms"]["mean"] == pytest.approx((100 + 300) / 2)
    assert summary["goodput_req_s"] == pytest.approx(0.5) and summary["goodput_req_s_per_gpu"] == pytest.approx(0.25)


def test_lengths_are_fixed_or_uniform_in_the_range() -> None:
    assert serving.sample_lengths(random.Random(0), 128, 0.0, 5) == [128] * 5
    drawn = serving.sample_lengths(random.Random(0), 10, 0.5, 2000)
    assert min(drawn) == 5 and max(drawn) == 15
    assert drawn == serving.sample_lengths(random.Random(0), 10, 0.5, 2000)


def test_arrivals_are_poisson_at_the_rate_or_all_at_once() -> None:
    assert serving.arrival_offsets(random.Random(0), 4, float("inf")) == [0.0] * 4
    offsets = serving.arrival_offsets(random.Random(1), 20000, 2.0)
    gaps = serving.inter_token_latencies(offsets)
    assert offsets[0] == 0.0 and all(gap >= 0 for gap in gaps)
    assert sum(gaps) / len(gaps) == pytest.approx(0.5, rel=0.03)
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.5 * 0.6931, rel=0.05)  # exponential: median ln 2 / rate
    assert offsets == serving.arrival_offsets(random.Random(1), 20000, 2.0)


def test_event_text_reads_both_wire_formats() -> None:
    assert serving.event_text({"choices": [{"index": 0, "text": "O", "finish_reason": None}]}) == "O"
    assert serving.event_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""
    assert serving.event_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert serving.event_text({"response": ", good"}) == ", good" and serving.event_text({"response": ""}) == ""


def fake_send(reply: httpx.Response | Exception) -> Result:
    """serving.send against a transport that answers `reply` (or raises it)."""

    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def go() -> Result:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://bench") as client:
            return await serving.send(client, serving.RequestSpec("ROMEO:", 2, 3), 0, args)

    args = serving.parse_args(["--model", SHAKESPEARE, "--timeout", "5"])
    return asyncio.run(go())


def sse(*events: str) -> httpx.Response:
    return httpx.Response(200, content="".join(f"data: {event}\n\n" for event in events).encode(),
                          headers={"content-type": "text/event-stream"})


def test_send_reads_tokens_and_usage_from_a_whole_stream() -> None:
    chunk = '{{"choices":[{{"index":0,"text":"{}","finish_reason":null}}]}}'
    result = fake_send(sse(chunk.format("a"), chunk.format("b"), chunk.format("c"),
                           '{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}', "[DONE]"))
    assert result.ok and result.error is None
    assert (result.prompt_tokens, result.output_tokens, len(result.token_times_s)) == (2, 3, 3)
    assert 0 < result.ttft_s == result.token_times_s[0] <= result.token_times_s[-1] <= result.e2e_s


def test_send_counts_each_kind_of_failure() -> None:
    assert fake_send(httpx.Response(429, json={"error": {"message": "overloaded"}})).error == "HTTP 429"
    failed = fake_send(sse('{"choices":[{"text":"a"}]}', '{"error":{"code":3043,"message":"engine failed"}}'))
    assert (failed.ok, failed.error, failed.detail) == (False, "error event 3043", "engine failed")
    cut = fake_send(sse('{"choices":[{"text":"a"}]}'))
    assert (cut.ok, cut.error) == (False, "cut before [DONE]")
    assert fake_send(sse('{"choices":[]}', "[DONE]")).error == "no tokens"
    assert fake_send(sse("not json")).error == "JSONDecodeError"
    assert fake_send(httpx.ReadTimeout("slow")).error == "client timeout"
    assert fake_send(httpx.ConnectError("refused")).error == "ConnectError"


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[str, str]]:
    with local_backend({SHAKESPEARE: builtin_model_path(SHAKESPEARE)}, **OPTIONS) as served:
        yield served


def run(backend: tuple[str, str], tmp_path: Path, *extra: str) -> dict:
    url, token = backend
    return serving.main(["--base-url", url, "--model", SHAKESPEARE, f"--token={token}", "--num-prompts", "6",
                         "--input-len", "16", "--output-len", "8", "--range-ratio", "0.5",
                         "--out", str(tmp_path / "serving.json"), *extra])


@pytest.mark.parametrize("endpoint", ["openai", "workers-ai"])
def test_a_sweep_on_a_real_backend(backend: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture,
                                   endpoint: str) -> None:
    plot = tmp_path / "latency.png"
    report = run(backend, tmp_path, "--rates", "8,inf", "--save-requests", "--gpus", "2", "--plot", str(plot),
                 "--endpoint", endpoint)
    assert json.loads((tmp_path / "serving.json").read_text()) == json.loads(json.dumps(report))
    assert [rate["request_rate"] for rate in report["results"]] == [8.0, "inf"]
    assert report["service"] == {"base_url": backend[0], "model": SHAKESPEARE, "endpoint": endpoint}
    assert report["config"]["num_prompts"] == 6 and "token" not in report["config"]
    for rate in report["results"]:
        assert (rate["completed"], rate["failed"], rate["short_outputs"]) == (6, 0, 0), rate["failures"]
        assert rate["ttft_ms"]["p50"] <= rate["e2e_ms"]["p50"] and rate["output_throughput_tok_s"] > 0
        assert rate["goodput_req_s_per_gpu"] == pytest.approx(rate["goodput_req_s"] / 2)
    for requests in report["requests"].values():
        assert all(r["ok"] and 0 < r["ttft_s"] <= r["e2e_s"] and r["output_tokens"] == r["output_len"]
                   for r in requests)
        assert [r["output_len"] for r in requests] == [r["output_len"] for r in report["requests"]["8.0"]]
    assert plot.exists() or "pip install edgewise[bench]" in capsys.readouterr().out


def test_a_wrong_token_fails_every_request_and_the_run_finishes(backend: tuple[str, str], tmp_path: Path) -> None:
    report = run(backend, tmp_path, "--rates", "inf", "--endpoint", "workers-ai", "--token", "wrong")
    (rate,) = report["results"]
    assert (rate["completed"], rate["failed"], rate["failures"]) == (0, 6, {"HTTP 403": 6})
    assert rate["goodput_req_s"] == 0 and rate["ttft_ms"]["p50"] is None
    assert (tmp_path / "serving.json").exists()


def test_a_client_timeout_is_counted(backend: tuple[str, str], tmp_path: Path) -> None:
    report = run(backend, tmp_path, "--output-len", "200", "--range-ratio", "0", "--timeout", "0.05")
    assert report["results"][0]["failures"] == {"client timeout": 6}
