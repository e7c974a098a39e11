"""Where the host's time goes in the step loop: torch.profiler's CPU view (Python-level torch ops
and CUDA runtime calls) over steps of the Llama-3.1-8B shape, with the step loop one step ahead
(async scheduling) and synchronous.

Two workloads: batch-1 decode, and a mixed one (64 prompts of 128..2,048 tokens being prefilled
in chunks while earlier ones decode). A host call that waits for the device (a synchronizing
copy or free, a full launch queue) shows up as a long CPU event; the CUDA caching allocator's
retry counter is printed beside it.

    PYTHONPATH=.:sdk:benchmarks python3 benchmarks/profile_host.py [--out results/profile_host.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from llama_shapes import environment, write_model_folder

from gpu_backend import LLM, SamplingParams


def profile_steps(llm: LLM, prompts: list[list[int]], max_tokens: int, skip: int, steps: int) -> dict:
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = [engine.add_request(p, params, stream=False) for p in prompts]
    for _ in range(skip):
        engine.step()
    torch.cuda.synchronize()
    retries_before = torch.cuda.memory_stats().get("num_alloc_retries", 0)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    retries = torch.cuda.memory_stats().get("num_alloc_retries", 0) - retries_before
    for request_id in ids:
        engine.abort(request_id)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:18]
    rows = [{"event": e.key[:80], "calls_per_step": e.count / steps, "self_cpu_us_per_step": e.self_cpu_time_total / steps}
            for e in events]
    return {"steps": steps, "alloc_retries": retries, "top_self_cpu": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rng = random.Random(0)
    decode_prompt = [rng.randrange(1000, 100000) for _ in range(128)]
    mixed_prompts = [[rng.randrange(1000, 100000) for _ in range(rng.randint(128, 2048))] for _ in range(64)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp) / "llama-3.1-8b-shape")
        for mode in ("async", "sync"):
            llm = LLM(str(folder), device="cuda", dtype="bfloat16", load_format="dummy", skip_tokenizer_init=True,
                      progress=False, max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=4096,
                      gpu_memory_utilization=0.90, async_scheduling=mode == "async")
            llm.generate([decode_prompt], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
            results[mode] = {
                "decode_batch_1": profile_steps(llm, [decode_prompt], 200, skip=20, steps=50),
                "mixed": profile_steps(llm, mixed_prompts, 64, skip=4, steps=12),
            }
            for workload, result in results[mode].items():
                print(f"== {mode} {workload}: allocator retries {result['alloc_retries']}", flush=True)
                for row in result["top_self_cpu"][:12]:
                    print(f"   {row['self_cpu_us_per_step']:9.1f} us/step  {row['calls_per_step']:6.1f} calls  "
                          f"{row['event']}", flush=True)
            del llm
            gc.collect()
            torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "profile_host", **environment(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
