"""Disaggregated prefill/decode against colocated replicas, under the same load, as a client sees it.

Each layout serves a Llama-3.1-8B-shaped model with random bf16 weights (``load_format="dummy"``)
on one GPU per instance: ``colocated:N`` is N replicas behind the service's router, ``pd:P+D`` is
P prefill and D decode instances. For each, ``serving.py`` (vLLM ``bench serve`` style) sweeps
``--rates`` with the same seeded requests (``--input-len`` prompt tokens, ``--output-len`` output
tokens) over HTTP. The tokenizer is a word-level one whose every id is a word (``t0`` ... ``t128255``),
and the prompts are random words, so no two prompts share a prefix and every sampled token streams
as text. Layouts needing more GPUs than the machine has are recorded as skipped.

Compared, when ``colocated:2`` and ``pd:1+1`` both ran: ITL p50 and p99 at the lowest rate where
the colocated p90 TTFT reaches ``--slo-ttft-ms``, and the best goodput per GPU (TTFT and TPOT within
their SLOs). Both directions are reported: where disaggregation loses too.

    python benchmarks/disagg_serving.py [--layouts colocated:1,colocated:2,pd:1+1] [--rates 2,4,8,16]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import serving  # noqa: E402
from gpu_backend.cluster.config import ClusterConfig  # noqa: E402
from gpu_backend.server.background import local_backend  # noqa: E402
from llama_shapes import LLAMA_3_1_8B, environment, write_model_folder  # noqa: E402

MODEL = "@cf/meta/llama-3.1-8b-instruct"
RESULTS = ROOT / "benchmarks" / "results" / "disagg_serving.json"


def word_tokenizer(folder: Path, vocab_size: int) -> None:
    """Every id a word ``t<id>``, split on whitespace and joined by spaces."""
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer.save(str(folder / "tokenizer.json"))


def random_corpus(path: Path, num_words: int, vocab_size: int, seed: int) -> Path:
    rng = random.Random(seed)
    path.write_text(" ".join(f"t{rng.randrange(1, vocab_size)}" for _ in range(num_words)))
    return path


def cluster_config(layout: str) -> tuple[ClusterConfig | None, int]:
    """The layout's instances, and the GPUs they take."""
    kind, _, shape = layout.partition(":")
    if kind == "colocated":
        instances = int(shape)
        return (ClusterConfig.colocated(instances=instances) if instances > 1 else None), instances
    if kind == "pd":
        prefill, decode = (int(n) for n in shape.split("+"))
        cluster = ClusterConfig.disaggregated(prefill_instances=prefill, decode_instances=decode)
        return cluster, prefill + decode
    raise SystemExit(f"a layout is colocated:N or pd:P+D, not {layout!r}")


def run_layout(layout: str, folder: Path, corpus: Path, args: argparse.Namespace, gpus: int, out: Path) -> dict:
    cluster, _ = cluster_config(layout)
    options: dict[str, Any] = {"device": "cuda", "dtype": "bfloat16", "load_format": "dummy",
                               "max_model_len": args.input_len + args.output_len + 64}
    if cluster is not None:
        options["cluster"] = cluster
    started, at_start = time.perf_counter(), triton_cache_entries()
    rows = []
    with local_backend({MODEL: folder}, **options) as (url, token):
        ready_s = time.perf_counter() - started
        startup_compiled = sorted(triton_cache_entries() - at_start)
        for rate in args.rates.split(","):  # one at a time, to see what each compiles
            before = triton_cache_entries()
            report = serving.main(["--base-url", url, f"--token={token}", "--model", MODEL, "--tokenizer", str(folder),
                                   "--corpus", str(corpus), "--input-len", str(args.input_len), "--output-len",
                                   str(args.output_len), "--rates", rate, "--num-prompts", str(args.num_prompts),
                                   "--seed", str(args.seed), "--slo-ttft-ms", str(args.slo_ttft_ms),
                                   "--slo-tpot-ms", str(args.slo_tpot_ms), "--gpus", str(gpus), "--out", str(out)])
            compiled = sorted(triton_cache_entries() - before)
            rows += [{**row, "triton_kernels_compiled": len(compiled), "triton_compiled": compiled}
                     for row in report["results"]]
    return {"gpus": gpus, "ready_s": ready_s, "triton_compiled_at_start": startup_compiled, "results": rows}


def triton_cache_entries() -> set[str]:
    """Kernels in Triton's cache, as "entry/kernel": one that appears during a rate compiled while it served."""
    folder = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    if not folder.is_dir():
        return set()
    return {f"{entry.name[:12]}/{file.stem}" for entry in folder.iterdir() if entry.is_dir()
            for file in entry.glob("*.json") if not file.name.startswith("__grp__")}


def compare(colocated: dict, disaggregated: dict, slo_ttft_ms: float) -> dict:
    """Disaggregated over colocated: ITL at the rate where colocated p90 TTFT reaches the SLO, best goodput per GPU."""
    by_rate = {row["request_rate"]: row for row in disaggregated["results"]}
    reached = next((row for row in colocated["results"]
                    if row["ttft_ms"]["p90"] is not None and row["ttft_ms"]["p90"] >= slo_ttft_ms), None)
    comparison: dict[str, Any] = {"rate": None}
    if reached is not None and reached["request_rate"] in by_rate:
        other = by_rate[reached["request_rate"]]
        comparison["rate"] = reached["request_rate"]
        for stat in ("p50", "p99"):
            ours, theirs = other["itl_ms"][stat], reached["itl_ms"][stat]
            comparison[f"itl_{stat}_ms"] = {"colocated": theirs, "disaggregated": ours,
                                            "colocated_over_disaggregated": theirs / ours if ours else None}
    best = {name: max((row["goodput_req_s_per_gpu"] or 0.0) for row in layout["results"])
            for name, layout in (("colocated", colocated), ("disaggregated", disaggregated))}
    comparison["goodput_per_gpu"] = {**best, "disaggregated_over_colocated":
                                     best["disaggregated"] / best["colocated"] if best["colocated"] else None}
    return comparison


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", default="colocated:1,colocated:2,pd:1+1")
    parser.add_argument("--rates", default="2,4,8,16")
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--input-len", type=int, default=2048)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slo-ttft-ms", type=float, default=500.0)
    parser.add_argument("--slo-tpot-ms", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    gpus = torch.cuda.device_count()
    record: dict[str, Any] = {"benchmark": "disagg_serving", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "environment": environment(), "model_shape": LLAMA_3_1_8B,
                              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "layouts": {}, "skipped": {}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_model_folder(Path(scratch) / "llama-3.1-8b-shape")
        word_tokenizer(folder, LLAMA_3_1_8B["vocab_size"])
        words = args.num_prompts * (args.input_len + 16) * 2
        corpus = random_corpus(Path(scratch) / "corpus.txt", words, LLAMA_3_1_8B["vocab_size"], args.seed)
        for layout in args.layouts.split(","):
            _, needed = cluster_config(layout)
            if needed > gpus:
                record["skipped"][layout] = f"needs {needed} GPUs, the machine has {gpus}"
                continue
            print(f"== {layout}", flush=True)
            record["layouts"][layout] = run_layout(layout, folder, corpus, args, needed,
                                                   Path(scratch) / f"{layout.replace(':', '-')}.json")
    layouts = record["layouts"]
    if "colocated:2" in layouts and "pd:1+1" in layouts:
        record["comparison"] = compare(layouts["colocated:2"], layouts["pd:1+1"], args.slo_ttft_ms)
        print(json.dumps(record["comparison"], indent=2))
    if record["skipped"]:
        print("skipped:", record["skipped"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
