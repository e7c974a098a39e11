"""Time to first token of one 4,096-token prompt, Llama-3.1-8B shape (random bf16 weights), one GPU,
against a transformers forward pass over the same prompt on the same GPU in the same run.

TFLOP/s counts the matmuls (2 x parameters x tokens) and causal attention (2 x 2 x layers x
heads x head_dim x tokens^2 / 2).

    python benchmarks/prefill_latency.py [--out benchmarks/results/prefill_latency.json]
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


def flops(config: dict, tokens: int) -> float:
    matmul = 2 * parameter_bytes(config)["params_matmul"] * tokens
    heads, dim = config["num_attention_heads"], config["head_dim"]
    attention = 2 * 2 * config["num_hidden_layers"] * heads * dim * tokens * tokens / 2
    return matmul + attention


def time_transformers(config: dict, prompt: list[int], repeats: int) -> float:
    from transformers import AutoModelForCausalLM, LlamaConfig

    hf_config = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16).eval()
    ids = torch.tensor([prompt], device="cuda")
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(ids, use_cache=False, logits_to_keep=1)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return min(times[1:])


def time_engine(folder: Path, prompt: list[int], repeats: int) -> float:
    llm = LLM(str(folder), device="cuda", dtype="bfloat16", load_format="dummy", skip_tokenizer_init=True,
              max_num_seqs=8, max_model_len=8192, max_num_batched_tokens=len(prompt), gpu_memory_utilization=0.85,
              progress=False)
    once = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    times = []
    for _ in range(repeats + 1):
        llm.engine.block_manager.reset_prefix_cache()  # a real prefill every time
        torch.cuda.synchronize()
        start = time.perf_counter()
        llm.generate([prompt], once)
        times.append(time.perf_counter() - start)
    del llm
    gc.collect()  # the model and its graphs sit in reference cycles
    torch.cuda.empty_cache()
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    prompt = torch.randint(1000, 100000, (args.tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    work = flops(LLAMA_3_1_8B, args.tokens)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp) / "llama-3.1-8b-shape")
        results["edgewise_ttft_s"] = time_engine(folder, prompt, args.repeats)
    if not args.skip_transformers:
        results["transformers_forward_s"] = time_transformers(LLAMA_3_1_8B, prompt, args.repeats)
    for name, seconds in results.items():
        print(f"{name:24} {seconds * 1000:8.1f} ms  {work / seconds / 1e12:6.0f} TFLOP/s", flush=True)
    record = {
        "benchmark": "prefill_latency", **environment(),
        "config": {"model": "Llama-3.1-8B shape, random bf16 weights", "prompt_tokens": args.tokens,
                   "repeats": args.repeats, "best_of_repeats": True},
        "flops": work, "results": results,
        "tflops": {name: work / seconds / 1e12 for name, seconds in results.items()},
    }
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
