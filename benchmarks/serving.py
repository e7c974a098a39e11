"""Online serving: a load generator that talks HTTP to the service like a real client (vLLM's ``bench serve``).

Each request is a streamed completion (``POST /v1/completions``, or Workers AI's run route with
``--endpoint workers-ai``) of a prompt cut from Tiny Shakespeare to a length in tokens, with
``max_tokens`` and ``ignore_eos`` so that it produces exactly its output length. Input and output
lengths are drawn uniformly from ``[len * (1 - range_ratio), len * (1 + range_ratio)]`` (vLLM's
random dataset), once per run with ``--seed``: every rate sends the same requests. Requests arrive
as a Poisson process at ``--request-rate`` (``inf``: all at once), optionally at most
``--max-concurrency`` in flight; ``--rates 1,2,4,8`` runs each rate in turn.

Per request: TTFT (send -> first token-bearing event), TPOT ((e2e - ttft) / (output tokens - 1)),
ITL (every gap between token-bearing events), E2E. A failure (an HTTP error, an error event, a
stream cut before ``[DONE]``, a client timeout) is counted with its reason and never stops the run.
Per rate: requests/s, output tok/s, mean and p50/p90/p99 of each latency, goodput (requests/s
meeting both ``--slo-ttft-ms`` and ``--slo-tpot-ms``; MLPerf's interactive SLO for Llama-3.1-8B
by default) and goodput per GPU with ``--gpus``. Prints a table, writes a JSON record and, with
``--plot``, a PNG of latency against rate (needs ``pip install edgewise[bench]``).

    python benchmarks/serving.py --model NAME [--base-url http://127.0.0.1:8790] [--rates 1,2,4,8]
        [--num-prompts 200] [--input-len 1024] [--output-len 128] [--range-ratio 0] [--out PATH] [--plot PATH.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
CORPORA = (ROOT.parent / "shared" / "data" / "tinyshakespeare.txt", ROOT / "shared" / "data" / "tinyshakespeare.txt",
           ROOT / "tests" / "gpu_backend" / "data" / "tinyshakespeare-200k.txt")
TOKEN_ENV = "EDGEWISE_BACKEND_TOKEN"
CHARS_PER_TOKEN_BOUND = 8  # a slice this many characters per token always holds enough tokens
LATENCIES = ("ttft", "tpot", "itl", "e2e")
console = Console()


def say(message: str) -> None:
    # brackets in a message are text, not rich markup; a long line stays one line
    console.print(message, markup=False, highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    input_len: int  # prompt tokens as our tokenizer counts them
    output_len: int  # max_tokens, with ignore_eos


@dataclass
class RequestResult:
    output_len: int  # asked for
    ok: bool = False
    error: str | None = None  # the reason it failed, grouped by in the report
    detail: str = ""
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    prompt_tokens: int = 0  # from the service's usage
    output_tokens: int = 0
    token_times_s: list[float] = field(default_factory=list)  # since send, one per token-bearing event


# ---- statistics (pure) ----

def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), interpolated linearly between ranks as numpy's default; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def describe(values_s: list[float]) -> dict[str, float | None]:
    """Mean, p50, p90, p99 in ms of values in seconds."""
    ms = [v * 1e3 for v in values_s]
    mean = sum(ms) / len(ms) if ms else None
    return {"mean": mean, **{f"p{q}": percentile(ms, q) for q in (50, 90, 99)}, "n": len(ms)}


def inter_token_latencies(token_times_s: list[float]) -> list[float]:
    """Every gap between consecutive token-bearing events."""
    return [later - earlier for earlier, later in zip(token_times_s, token_times_s[1:])]


def time_per_output_token(ttft_s: float, e2e_s: float, output_tokens: int) -> float | None:
    """(e2e - ttft) / (tokens - 1): None for one token, which has no time between tokens."""
    return (e2e_s - ttft_s) / (output_tokens - 1) if output_tokens > 1 else None


def meets_slo(result: RequestResult, slo_ttft_ms: float, slo_tpot_ms: float) -> bool:
    tpot = time_per_output_token(result.ttft_s, result.e2e_s, result.output_tokens)
    return result.ok and result.ttft_s * 1e3 <= slo_ttft_ms and (tpot is None or tpot * 1e3 <= slo_tpot_ms)


def goodput(results: list[RequestResult], duration_s: float, slo_ttft_ms: float, slo_tpot_ms: float) -> float:
    """Requests per second that succeeded within both SLOs."""
    return sum(meets_slo(r, slo_ttft_ms, slo_tpot_ms) for r in results) / duration_s if duration_s > 0 else 0.0


def sample_lengths(rng: random.Random, length: int, range_ratio: float, count: int) -> list[int]:
    """Uniform integers in [length * (1 - ratio), length * (1 + ratio)], at least 1."""
    low, high = max(1, math.floor(length * (1 - range_ratio))), max(1, math.ceil(length * (1 + range_ratio)))
    return [rng.randint(low, high) for _ in range(count)]


def arrival_offsets(rng: random.Random, count: int, rate: float) -> list[float]:
    """Send times in seconds from the start: a Poisson process at `rate` req/s; all zero at inf."""
    if math.isinf(rate):
        return [0.0] * count
    offsets, now = [], 0.0
    for _ in range(count):
        offsets.append(now)
        now += rng.expovariate(rate)
    return offsets


def summarize_rate(rate: float, results: list[RequestResult], duration_s: float, args: argparse.Namespace) -> dict:
    done = [r for r in results if r.ok]
    tpots = [t for r in done if (t := time_per_output_token(r.ttft_s, r.e2e_s, r.output_tokens)) is not None]
    output_tokens = sum(r.output_tokens for r in done)
    good = goodput(results, duration_s, args.slo_ttft_ms, args.slo_tpot_ms)
    return {
        "request_rate": rate_name(rate), "num_prompts": len(results), "completed": len(done),
        "failed": len(results) - len(done), "failures": dict(Counter(r.error for r in results if not r.ok)),
        "failure_examples": list(dict.fromkeys(r.detail for r in results if not r.ok))[:3],
        "short_outputs": sum(r.output_tokens < r.output_len for r in done), "duration_s": duration_s,
        "request_throughput": len(done) / duration_s, "output_throughput_tok_s": output_tokens / duration_s,
        "total_input_tokens": sum(r.prompt_tokens for r in done), "total_output_tokens": output_tokens,
        "ttft_ms": describe([r.ttft_s for r in done]), "tpot_ms": describe(tpots),
        "itl_ms": describe([gap for r in done for gap in inter_token_latencies(r.token_times_s)]),
        "e2e_ms": describe([r.e2e_s for r in done]),
        "goodput_req_s": good, "goodput_req_s_per_gpu": good / args.gpus if args.gpus else None,
    }


def rate_name(rate: float) -> float | str:
    return "inf" if math.isinf(rate) else rate


# ---- requests ----

def load_tokenizer(path: str | None, model: str) -> Tokenizer:
    """``--tokenizer`` (a tokenizer.json or a folder holding one), else the built-in model's own."""
    if path is None:
        from gpu_backend.builtin_models import BUILTIN_MODELS  # only a built-in model's tokenizer is known here
        if model not in BUILTIN_MODELS:
            sys.exit(f"--tokenizer is needed for {model}: the folder (or tokenizer.json) of the served model")
        path = str(BUILTIN_MODELS[model])
    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    return Tokenizer.from_file(str(file))


def build_requests(tokenizer: Tokenizer, corpus: str, args: argparse.Namespace) -> list[RequestSpec]:
    """Prompts cut from random places in the corpus to their drawn length in tokens."""
    rng = random.Random(args.seed)
    input_lens = sample_lengths(rng, args.input_len, args.range_ratio, args.num_prompts)
    output_lens = sample_lengths(rng, args.output_len, args.range_ratio, args.num_prompts)
    specs = []
    for input_len, output_len in zip(input_lens, output_lens):
        span = input_len * CHARS_PER_TOKEN_BOUND + 16
        text = corpus * math.ceil(2 * span / len(corpus)) if span > len(corpus) // 2 else corpus
        start = rng.randrange(len(text) - span)
        ids = tokenizer.encode(text[start:start + span], add_special_tokens=False).ids[:input_len]
        specs.append(RequestSpec(tokenizer.decode(ids), len(ids), output_len))
    return specs


def request_body(spec: RequestSpec, index: int, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    body = {"prompt": spec.prompt, "max_tokens": spec.output_len, "ignore_eos": True, "stream": True,
            "temperature": args.temperature, "seed": args.seed + index + 1}
    if args.endpoint == "workers-ai":
        return f"/client/v4/accounts/bench/ai/run/{args.model}", {**body, "raw": True}
    return "/v1/completions", {**body, "model": args.model, "stream_options": {"include_usage": True}}


def event_text(event: dict[str, Any]) -> str:
    """The text an OpenAI completion chunk or a Workers AI event carries."""
    if "response" in event:
        return event["response"] or ""
    choices = event.get("choices") or [{}]
    return choices[0].get("text") or (choices[0].get("delta") or {}).get("content") or ""


async def send(client: httpx.AsyncClient, spec: RequestSpec, index: int, args: argparse.Namespace) -> RequestResult:
    result = RequestResult(spec.output_len)
    path, body = request_body(spec, index, args)
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(args.timeout):
            async with client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    result.error = f"HTTP {response.status_code}"
                    result.detail = (await response.aread()).decode(errors="replace")[:300]
                    return result
                await read_stream(response, result, sent)
    except (TimeoutError, httpx.TimeoutException) as error:
        result.error, result.detail = "client timeout", f"{type(error).__name__} within --timeout {args.timeout:g} s"
    except Exception as error:  # noqa: BLE001 - a failed request is counted, never fatal to the run
        result.ok, result.error, result.detail = False, type(error).__name__, str(error)[:300]
    return result


async def read_stream(response: httpx.Response, result: RequestResult, sent: float) -> None:
    async for line in response.aiter_lines():
        now = time.perf_counter() - sent
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            result.e2e_s, result.ok = now, bool(result.token_times_s)
            result.output_tokens = result.output_tokens or len(result.token_times_s)  # no usage: count events
            result.error = None if result.ok else "no tokens"
            return
        event = json.loads(data)
        if "error" in event:
            error = event["error"]
            result.error, result.detail = f"error event {error.get('code')}", str(error.get("message"))[:300]
            return
        if event_text(event):
            result.ttft_s = result.ttft_s or now
            result.token_times_s.append(now)
        if usage := event.get("usage"):
            result.prompt_tokens, result.output_tokens = usage.get("prompt_tokens", 0), usage["completion_tokens"]
    result.error, result.detail = "cut before [DONE]", "the stream ended without [DONE]"


async def run_rate(specs: list[RequestSpec], rate: float, args: argparse.Namespace,
                   headers: dict[str, str]) -> tuple[list[RequestResult], float]:
    offsets = arrival_offsets(random.Random(args.seed), len(specs), rate)
    limit = asyncio.Semaphore(args.max_concurrency or len(specs))
    timeout = httpx.Timeout(args.timeout, connect=min(args.timeout, 10.0))
    limits = httpx.Limits(max_connections=args.max_concurrency, max_keepalive_connections=args.max_concurrency)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=timeout, limits=limits) as client:
        await send(client, specs[0], 0, args)  # warm-up: a connection, the first compilations; not counted
        start = time.perf_counter()

        async def arrive(index: int) -> RequestResult:
            await asyncio.sleep(max(0.0, start + offsets[index] - time.perf_counter()))
            async with limit:  # at the cap a request waits for a slot before its clock starts, as in vLLM
                return await send(client, specs[index], index, args)

        results = await asyncio.gather(*(arrive(i) for i in range(len(specs))))
        return list(results), time.perf_counter() - start


# ---- reporting ----

def print_table(summaries: list[dict]) -> None:
    table = Table(title="serving: latencies in ms")
    table.add_column("request rate (req/s)")
    for summary in summaries:
        table.add_column(str(summary["request_rate"]), justify="right")

    def row(label: str, values: list[Any]) -> None:
        table.add_row(label, *("-" if v is None else f"{v:,.2f}" if isinstance(v, float) else str(v) for v in values))

    row("completed / failed", [f"{s['completed']} / {s['failed']}" for s in summaries])
    row("requests/s", [s["request_throughput"] for s in summaries])
    row("output tok/s", [s["output_throughput_tok_s"] for s in summaries])
    for name in LATENCIES:
        for stat in ("mean", "p50", "p90", "p99"):
            row(f"{name.upper()} {stat}", [s[f"{name}_ms"][stat] for s in summaries])
    row("goodput req/s", [s["goodput_req_s"] for s in summaries])
    if summaries[0]["goodput_req_s_per_gpu"] is not None:
        row("goodput req/s per GPU", [s["goodput_req_s_per_gpu"] for s in summaries])
    console.print(table)
    for summary in summaries:
        if summary["failures"]:
            say(f"rate {summary['request_rate']}: failures {summary['failures']}, "
                f"e.g. {summary['failure_examples'][0]}")
        if summary["short_outputs"]:
            say(f"rate {summary['request_rate']}: {summary['short_outputs']} requests stopped before their output "
                "length: the service did not honour ignore_eos, so per-token figures mix lengths")


def plot(summaries: list[dict], path: Path) -> bool:
    """TTFT, TPOT and ITL p50 and p99 against the request rate; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say(f"matplotlib is not installed, so no plot was drawn at {path}: pip install edgewise[bench]")
        return False
    labels = [str(s["request_rate"]) for s in summaries]  # categorical: "inf" has a place too
    figure, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for axis, name in zip(axes, ("ttft", "tpot", "itl")):
        for stat in ("p50", "p99"):
            axis.plot(labels, [s[f"{name}_ms"][stat] or math.nan for s in summaries], marker="o", label=stat)
        axis.set(title=name.upper(), xlabel="request rate (req/s)", ylabel="ms")
        axis.grid(alpha=0.3)
        axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def environment() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpus = []
    if shutil.which("nvidia-smi"):  # the client's machine: the service's too when both run on one host
        query = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, check=False)
        gpus = query.stdout.strip().splitlines()
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": gpus, "python": platform.python_version(),
            "platform": platform.platform(), **{name: version(name) for name in ("httpx", "rich", "tokenizers")}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8790", help="the service")
    parser.add_argument("--model", required=True, help="the served model's name, e.g. @cf/edgewise/tiny-shakespeare")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"bearer token (default ${TOKEN_ENV})")
    parser.add_argument("--endpoint", choices=("openai", "workers-ai"), default="openai",
                        help="/v1/completions or /client/v4/accounts/{id}/ai/run/{model}")
    parser.add_argument("--tokenizer", help="tokenizer.json or its folder (default: the built-in model's)")
    parser.add_argument("--corpus", type=Path, default=next((p for p in CORPORA if p.exists()), CORPORA[0]))
    parser.add_argument("--num-prompts", type=int, default=200, help="requests per rate")
    parser.add_argument("--input-len", type=int, default=1024, help="prompt tokens")
    parser.add_argument("--output-len", type=int, default=128, help="output tokens (eos ignored)")
    parser.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in len*(1 +- ratio)")
    parser.add_argument("--request-rate", type=float, default=math.inf, help="Poisson arrivals, req/s; inf: at once")
    parser.add_argument("--rates", help="comma-separated rates run in turn, e.g. 1,2,4,8,inf (over --request-rate)")
    parser.add_argument("--max-concurrency", type=int, help="requests in flight at most")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="lengths, prompts, arrivals and sampling seeds")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take, whole")
    parser.add_argument("--slo-ttft-ms", type=float, default=500.0)
    parser.add_argument("--slo-tpot-ms", type=float, default=30.0)
    parser.add_argument("--gpus", type=int, help="GPUs behind the service, for goodput per GPU")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON record")
    parser.add_argument("--plot", type=Path, help="PNG of TTFT/TPOT/ITL p50 and p99 against the rate")
    parser.add_argument("--save-requests", action="store_true", help="add every request's figures to the JSON")
    args = parser.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.request_rate]
    if args.num_prompts < 1 or args.input_len < 1 or args.output_len < 1 or not 0 <= args.range_ratio < 1:
        parser.error("--num-prompts, --input-len and --output-len must be >= 1 and --range-ratio in [0, 1)")
    if args.seed < 0 or any(rate <= 0 for rate in args.rates):
        parser.error("--seed must be >= 0 and request rates > 0 (inf: all at once)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    specs = build_requests(load_tokenizer(args.tokenizer, args.model), args.corpus.read_text(), args)
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    per_rate, requests = [], {}
    for rate in args.rates:
        say(f"rate {rate_name(rate)} req/s: {len(specs)} requests to {args.base_url} ({args.model})")
        results, duration_s = asyncio.run(run_rate(specs, rate, args, headers))
        per_rate.append(summarize_rate(rate, results, duration_s, args))
        requests[str(rate_name(rate))] = [{k: v for k, v in asdict(r).items() if k != "token_times_s"}
                                          for r in results]
    print_table(per_rate)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "token"}
    config["rates"] = [rate_name(rate) for rate in args.rates]
    config["request_rate"] = rate_name(args.request_rate)
    report = {"benchmark": "serving", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "environment": environment(),
              "service": {"base_url": args.base_url, "model": args.model, "endpoint": args.endpoint},
              "config": config, "requested_input_tokens_mean": sum(s.input_len for s in specs) / len(specs),
              "requested_output_tokens_mean": sum(s.output_len for s in specs) / len(specs), "results": per_rate}
    if args.save_requests:
        report["requests"] = requests
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {args.out}")
    if args.plot and plot(per_rate, args.plot):
        say(f"wrote {args.plot}")
    return report


if __name__ == "__main__":
    main()
