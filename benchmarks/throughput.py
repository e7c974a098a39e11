"""Offline throughput: 1,000 requests submitted at once, Llama-3.1-8B shape (random bf16 weights).

Prompt lengths uniform in 128..2,048, output lengths uniform in 64..512 (eos ignored, so every
request produces exactly its length), fixed seed. Output tokens/s counts generated tokens over
the wall time from submission to the last token, prefill included. The baseline is
transformers' batched ``generate`` on the same GPU in the same run, over the first requests
(left-padded batches; it is too slow to run all of them).

    python benchmarks/throughput.py [--requests 1000] [--out benchmarks/results/throughput.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from llama_shapes import LLAMA_3_1_8B, environment, parameter_bytes, write_model_folder

from gpu_backend import LLM, SamplingParams
from gpu_backend.engine.stats import StepStats


def workload(count: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(1000, 100000) for _ in range(rng.randint(128, 2048))], rng.randint(64, 512))
            for _ in range(count)]


def run_engine(folder: Path, requests: list[tuple[list[int], int]], options: dict) -> dict:
    llm = LLM(str(folder), device="cuda", dtype="bfloat16", load_format="dummy", skip_tokenizer_init=True,
              progress=False, **options)
    llm.generate([requests[0][0][:128]], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))  # warm-up
    prompts = [prompt for prompt, _ in requests]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for _, n in requests]
    llm.engine.core.stats = StepStats()
    llm.engine.runner.prepare_s = 0.0
    torch.cuda.synchronize()
    retries = torch.cuda.memory_stats().get("num_alloc_retries", 0)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    retries = torch.cuda.memory_stats().get("num_alloc_retries", 0) - retries
    generated = sum(len(o.token_ids) for o in outputs)
    assert generated == sum(n for _, n in requests)
    stats = {"kv_blocks": llm.engine.block_manager.num_blocks, "preemptions": llm.engine.scheduler.num_preemptions,
             "allocator_retries": retries,  # cudaMalloc failed, cache freed (synchronizes the device)
             "steps": llm.engine.stats.as_dict()}
    del llm
    gc.collect()  # the model and its graphs sit in reference cycles
    torch.cuda.empty_cache()
    return {"elapsed_s": elapsed, "output_tokens": generated, "output_tok_s": generated / elapsed, **stats}


def run_transformers(requests: list[tuple[list[int], int]], batch_size: int) -> dict:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LLAMA_3_1_8B
    hf_config = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16).eval()
    generated, start = 0, time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(requests), batch_size):
            chunk = requests[first:first + batch_size]
            width = max(len(p) for p, _ in chunk)
            ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in chunk], device="cuda")
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk], device="cuda")
            new = max(n for _, n in chunk)
            model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=0)
            generated += sum(n for _, n in chunk)  # tokens the requests asked for; padding rows beyond are not counted
    elapsed = time.perf_counter() - start
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return {"elapsed_s": elapsed, "output_tokens": generated, "output_tok_s": generated / elapsed,
            "requests": len(requests), "batch_size": batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--hf-requests", type=int, default=64)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--sync", action="store_true", help="read each step back before the next (async_scheduling off)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    requests = workload(args.requests, args.seed)
    prompt_tokens = sum(len(p) for p, _ in requests)
    output_tokens = sum(n for _, n in requests)
    options = {"max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
               "max_model_len": 4096, "gpu_memory_utilization": 0.90, "async_scheduling": not args.sync}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp) / "llama-3.1-8b-shape")
        engine = run_engine(folder, requests, options)
    print(f"edgewise      {engine['output_tok_s']:9.0f} output tok/s  ({engine['output_tokens']} tokens in "
          f"{engine['elapsed_s']:.1f} s; {engine['preemptions']} preemptions; {engine['allocator_retries']} allocator "
          f"retries)", flush=True)
    steps = engine["steps"]
    print(f"  {steps['steps']} steps ({steps['decode_only_steps']} decode-only), {steps['mean_tokens_per_step']:.0f} "
          f"tokens/step; host time: schedule {steps['schedule_s']:.1f} s, prepare {steps['prepare_s']:.1f} s, "
          f"launch {steps['launch_s']:.1f} s, postprocess {steps['postprocess_s']:.1f} s; "
          f"waiting for the device {steps['wait_s']:.1f} s", flush=True)
    baseline = None
    if args.hf_requests:
        baseline = run_transformers(requests[: args.hf_requests], args.hf_batch_size)
        print(f"transformers  {baseline['output_tok_s']:9.0f} output tok/s  (first {baseline['requests']} requests, "
              f"batches of {baseline['batch_size']})", flush=True)
    matmul_flops = 2 * parameter_bytes(LLAMA_3_1_8B)["params_matmul"] * (prompt_tokens + output_tokens)
    print(f"workload: {prompt_tokens} prompt + {output_tokens} output tokens; matmuls alone are "
          f"{matmul_flops / 1e15:.1f} PFLOP ({matmul_flops / engine['elapsed_s'] / 1e12:.0f} TFLOP/s achieved)")
    record = {
        "benchmark": "throughput", **environment(),
        "config": {"model": "Llama-3.1-8B shape, random bf16 weights", "requests": args.requests, "seed": args.seed,
                   "prompt_len": [128, 2048], "output_len": [64, 512], "prompt_tokens": prompt_tokens,
                   "output_tokens": output_tokens, **options},
        "edgewise": engine, "transformers": baseline,
    }
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
