"""Sharded instances on GPUs: decode and prefill speed per TP x PP layout, and cold start.

For each layout (``TPxPP``; ``inproc`` is the engine in this process, the baseline for the
sharded path's own cost) on a Llama-3.1-8B-shaped model with random bf16 weights:

- batch-1 decode tok/s: one request, 128-token prompt, 256 new tokens, eos ignored, timed from
  its first token to its last as the service receives them;
- throughput at batch 32 and 64: that many requests at once, 128-token prompts, 128 new tokens;
- prefill tok/s on a stream of long prompts: 8 prompts of 8,192 tokens at once, one new token each;
- time to ready (spawn, NCCL, random weights, CUDA graphs).

With two GPUs or more, NCCL's all-reduce of one decode token's hidden state is timed eagerly and
inside a CUDA graph (what a decode step does 2 x layers times). ``--cold-start`` writes the 8B
shape as safetensors to local disk and times the engine from nothing to ready.
Layouts needing more GPUs than the machine has are listed as skipped.

    python benchmarks/parallel_decode.py --layouts inproc,1x1,2x1,1x2 --out benchmarks/results/parallel_decode.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from llama_shapes import LLAMA_3_1_8B, environment, parameter_bytes, write_model_folder

from gpu_backend import SamplingParams
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.config import EngineConfig
from gpu_backend.engine.async_llm import AsyncLLM
from gpu_backend.cluster.sharded_engine import ShardedEngine

ENGINE = {"device": "cuda", "dtype": "bfloat16", "load_format": "dummy", "skip_tokenizer_init": True,
          "max_num_seqs": 64, "max_model_len": 8320, "gpu_memory_utilization": 0.85}


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(1000, 100000, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


async def timed(engine: Any, tokens: list[int], new_tokens: int, request_id: str) -> list[float]:
    """Arrival time of each new token."""
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    arrivals: list[float] = []
    async for output in engine.generate(tokens, params, request_id):
        now = time.perf_counter()
        arrivals += [now] * len(output.new_token_ids)
    return arrivals


async def measure(engine: Any, batches: list[int]) -> dict[str, float]:
    row: dict[str, float] = {}
    await timed(engine, prompt(128, 0), 32, "warm")
    rates = []
    for repeat in range(2):
        arrivals = await timed(engine, prompt(128, repeat + 1), 256, f"b1-{repeat}")
        rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
    row["batch1_decode_tok_s"] = max(rates)
    for batch in batches:
        start = time.perf_counter()
        runs = await asyncio.gather(*(timed(engine, prompt(128, 100 + i), 128, f"b{batch}-{i}") for i in range(batch)))
        end = max(run[-1] for run in runs)
        first_all = max(run[0] for run in runs)
        later = sum(sum(1 for t in run if t > first_all) for run in runs)
        row[f"batch{batch}_output_tok_s"] = sum(len(run) for run in runs) / (end - start)
        row[f"batch{batch}_decode_tok_s"] = later / (end - first_all)
    start = time.perf_counter()
    await asyncio.gather(*(timed(engine, prompt(8192, 200 + i), 1, f"long-{i}") for i in range(8)))
    row["prefill_8k_tok_s"] = 8 * 8192 / (time.perf_counter() - start)
    return row


def run_layout(layout: str, folder: Path, batches: list[int]) -> dict[str, float]:
    started = time.perf_counter()
    if layout == "inproc":
        engine: Any = AsyncLLM(str(folder), progress=False, **ENGINE)
    else:
        tp, pp = (int(part) for part in layout.split("x"))
        engine = ShardedEngine(EngineConfig(model=str(folder), **ENGINE), ClusterConfig.colocated(tp, pp, instance_timeout_s=120.0))
    ready_s = time.perf_counter() - started
    try:
        row = asyncio.run(measure(engine, batches))
    finally:
        engine.shutdown()
    row["ready_s"] = ready_s
    return row


def _all_reduce_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    x = torch.ones(1, 4096, dtype=torch.bfloat16, device="cuda")
    for _ in range(50):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    calls = 2000
    start = time.perf_counter()
    for _ in range(calls):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    eager_us = (time.perf_counter() - start) / calls * 1e6
    graph, per_graph = torch.cuda.CUDAGraph(), 64
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        dist.all_reduce(x)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            for _ in range(per_graph):
                dist.all_reduce(x)
    replays = 200
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    graph_us = (time.perf_counter() - start) / (replays * per_graph) * 1e6
    if rank == 0:
        Path(out).write_text(json.dumps({"eager_us": eager_us, "in_graph_us": graph_us}))
    dist.destroy_process_group()


def all_reduce_latency() -> dict[str, float]:
    from gpu_backend.cluster.launch import free_port

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        mp.start_processes(_all_reduce_rank, nprocs=2, args=(free_port(), out.name), start_method="spawn")
        return json.loads(Path(out.name).read_text())


def write_checkpoint(folder: Path, config: dict[str, Any]) -> float:
    """The shape as Hugging Face safetensors shards of random bf16 weights; returns GB written."""
    from safetensors.torch import save_file

    h, i, v, d = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    layer = {"self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
             "self_attn.o_proj.weight": (h, q), "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h),
             "mlp.down_proj.weight": (h, i), "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}
    groups: list[dict[str, tuple[int, ...]]] = [{"model.embed_tokens.weight": (v, h)}]
    for index in range(config["num_hidden_layers"]):
        groups.append({f"model.layers.{index}.{name}": shape for name, shape in layer.items()})
    groups.append({"model.norm.weight": (h,), "lm_head.weight": (v, h)})
    weight_map, total, shard = {}, 0, 0
    for start in range(0, len(groups), 4):
        names = {name: shape for group in groups[start:start + 4] for name, shape in group.items()}
        tensors = {name: (torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.02).cpu()
                   for name, shape in names.items()}
        file = f"model-{shard:05d}.safetensors"
        save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        total += sum(t.numel() * 2 for t in tensors.values())
        shard += 1
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    os.sync()
    return total / 1e9


def read_speed(folder: Path) -> float:
    """GB/s reading the checkpoint's files from disk once (page cache dropped first)."""
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    started, total = time.perf_counter(), 0
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb", buffering=0) as handle:
            while chunk := handle.read(64 << 20):
                total += len(chunk)
    return total / (time.perf_counter() - started) / 1e9


def cold_start(config: dict[str, Any]) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)8.0f ms %(name)s: %(message)s")
    logging.getLogger("gpu_backend").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DISK", "/tmp")) as tmp:
        folder = write_model_folder(Path(tmp) / "llama-3.1-8b-shape", config)
        started = time.perf_counter()
        gigabytes = write_checkpoint(folder, config)
        row: dict[str, Any] = {"checkpoint_gb": gigabytes, "write_s": time.perf_counter() - started}
        try:
            row["disk_read_gb_s"] = read_speed(folder)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            row["page_cache"] = "dropped before each start"
        except OSError as error:
            row["page_cache"] = f"warm (could not drop it: {error.strerror})"
        options = {**ENGINE, "load_format": "safetensors"}
        started = time.perf_counter()
        llm = AsyncLLM(str(folder), progress=False, **options)
        row["inproc_ready_s"] = time.perf_counter() - started
        llm.shutdown()
        del llm
        gc.collect()
        torch.cuda.empty_cache()
        if row["page_cache"].startswith("dropped"):
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        started = time.perf_counter()
        engine = ShardedEngine(EngineConfig(model=str(folder), **options), ClusterConfig(instance_timeout_s=120.0))
        row["sharded_1x1_ready_s"] = time.perf_counter() - started
        engine.shutdown()
    return row


def _ranks(layout: str) -> int:
    tp, pp = (int(part) for part in layout.split("x"))
    return tp * pp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", default="inproc,1x1,2x1,1x2,2x2,4x1")
    parser.add_argument("--batches", default="32,64")
    parser.add_argument("--cold-start", action="store_true")
    parser.add_argument("--cold-start-only", action="store_true", help="skip the layouts")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config, gpus = LLAMA_3_1_8B, torch.cuda.device_count()
    batches = [int(b) for b in args.batches.split(",")]
    record: dict[str, Any] = {"benchmark": "parallel_decode", **environment(), "gpus": gpus,
                              "config": {"model": "Llama-3.1-8B shape, random bf16 weights", **ENGINE},
                              "weights_read_per_token_gb": parameter_bytes(config)["read_per_token"] / 1e9,
                              "results": {}, "skipped": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp) / "llama-3.1-8b-shape", config)
        for layout in [] if args.cold_start_only else args.layouts.split(","):
            needed = 1 if layout == "inproc" else _ranks(layout)
            if needed > gpus:
                record["skipped"][layout] = f"needs {needed} GPUs, the machine has {gpus}"
                continue
            row = run_layout(layout, folder, batches)
            record["results"][layout] = row
            print(layout, {key: round(value, 1) for key, value in row.items()}, flush=True)
            gc.collect()
            torch.cuda.empty_cache()
    if gpus >= 2:
        record["all_reduce_8KiB"] = all_reduce_latency()
        print("all-reduce of 8 KiB:", record["all_reduce_8KiB"], flush=True)
    if args.cold_start or args.cold_start_only:
        record["cold_start"] = cold_start(config)
        print("cold start:", record["cold_start"], flush=True)
    if record["skipped"]:
        print("skipped:", record["skipped"])
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
