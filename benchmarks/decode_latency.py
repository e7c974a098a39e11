"""Batch-1 decode speed of a Llama-3.1-8B-shaped model (random bf16 weights) on one GPU.

128-token prompt, 512 new tokens, greedy with eos ignored. Decode tok/s excludes the first
token (prefill); achieved GB/s counts the weights and KV cache read per step, printed beside the
floor set by the GPU's memory bandwidth. Variants: CUDA graphs (default), and each with one
thing turned back: the step loop reading each step back before the next (graphs-sync,
async_scheduling=False), decode attention's split merge as a separate kernel
(graphs-unfused-merge), torch's argmax for greedy sampling (graphs-torch-argmax), no
programmatic dependent launch (graphs-no-pdl); and eager.

    python benchmarks/decode_latency.py [--out benchmarks/results/decode_latency.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch

from llama_shapes import LLAMA_3_1_8B, environment, parameter_bytes, write_model_folder

from gpu_backend import LLM, SamplingParams
from gpu_backend.kernels import pdl, reference, triton_attention

PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}  # datasheet HBM bandwidth, bytes/s


def peak_bandwidth() -> float | None:
    name = torch.cuda.get_device_name(0)
    return next((value for key, value in PEAK_BANDWIDTH.items() if key in name), None)


def measure(llm: LLM, prompt_len: int, new_tokens: int, repeats: int) -> dict[str, float]:
    prompt = torch.randint(1000, 100000, (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    greedy = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    first = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True))  # warm-up
    ttfts, totals = [], []
    for _ in range(repeats):
        llm.engine.block_manager.reset_prefix_cache()
        torch.cuda.synchronize()
        start = time.perf_counter()
        llm.generate([prompt], first)
        ttfts.append(time.perf_counter() - start)
        llm.engine.block_manager.reset_prefix_cache()
        start = time.perf_counter()
        out = llm.generate([prompt], greedy)[0]
        totals.append(time.perf_counter() - start)
        assert len(out.token_ids) == new_tokens
    ttft, total = min(ttfts), min(totals)
    return {"ttft_s": ttft, "total_s": total, "decode_tok_s": (new_tokens - 1) / (total - ttft)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants",
                        default="graphs,graphs-sync,graphs-unfused-merge,graphs-torch-argmax,graphs-no-pdl,eager")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = LLAMA_3_1_8B
    sizes = parameter_bytes(config)
    kv_per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 2
    avg_context = args.prompt_len + args.new_tokens / 2
    bytes_per_step = sizes["read_per_token"] + kv_per_token * avg_context
    peak = peak_bandwidth()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp) / "llama-3.1-8b-shape", config)
        for variant in args.variants.split(","):
            pdl.ENABLED = variant != "graphs-no-pdl"
            triton_attention.FUSED_SPLIT_REDUCE = variant != "graphs-unfused-merge"
            llm = LLM(str(folder), device="cuda", dtype="bfloat16", load_format="dummy", skip_tokenizer_init=True,
                      max_num_seqs=8, max_model_len=4096, gpu_memory_utilization=0.85,
                      enforce_eager=variant == "eager", async_scheduling=variant != "graphs-sync",
                      progress=False)
            if variant == "graphs-torch-argmax":
                llm.engine.runner.sampler.argmax = reference.argmax
            row = measure(llm, args.prompt_len, args.new_tokens, args.repeats)
            steps = llm.engine.stats
            host_s = steps.schedule_s + steps.launch_s + steps.postprocess_s
            row["host_ms_per_step"] = 1000 * host_s / steps.steps
            row["host_ms_per_step_prepare"] = 1000 * steps.prepare_s / steps.steps
            row["wait_ms_per_step"] = 1000 * steps.wait_s / steps.steps
            row["achieved_GB_s"] = row["decode_tok_s"] * bytes_per_step / 1e9
            results[variant] = row
            print(f"{variant:13} decode {row['decode_tok_s']:7.1f} tok/s  {row['achieved_GB_s']:7.0f} GB/s  "
                  f"TTFT {row['ttft_s'] * 1000:6.1f} ms  host/step {row['host_ms_per_step']:.3f} ms (prepare "
                  f"{row['host_ms_per_step_prepare']:.3f}), waiting for the device {row['wait_ms_per_step']:.3f} ms",
                  flush=True)
            pdl.ENABLED, triton_attention.FUSED_SPLIT_REDUCE = True, True
            del llm
            gc.collect()  # the model and its graphs sit in reference cycles
            torch.cuda.empty_cache()
    floor = peak / bytes_per_step if peak else None
    if floor:
        print(f"floor at the datasheet {peak / 1e12:.2f} TB/s: {floor:.0f} tok/s "
              f"({bytes_per_step / 1e9:.2f} GB read per step: weights + average KV)")
    record = {
        "benchmark": "decode_latency", **environment(),
        "config": {"model": "Llama-3.1-8B shape, random bf16 weights", "batch": 1, "prompt_len": args.prompt_len,
                   "new_tokens": args.new_tokens, "repeats": args.repeats, "best_of_repeats": True},
        "bytes_read_per_step": bytes_per_step, "floor_tok_s": floor, "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
