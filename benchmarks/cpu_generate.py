"""How fast a small model generates on CPU (the development and CI path): SmolLM-135M shape,
random float32 weights, torch kernels. Batch 1 and batch 8, 64-token prompts, 64 new tokens.

    python benchmarks/cpu_generate.py [--out benchmarks/results/cpu_generate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from llama_shapes import environment, write_model_folder

from gpu_backend import LLM, SamplingParams

SMOLLM_135M = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
    "hidden_act": "silu", "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp) / "smollm-135m-shape", SMOLLM_135M)
        llm = LLM(str(folder), device="cpu", dtype="float32", load_format="dummy", skip_tokenizer_init=True,
                  progress=False, kv_cache_memory_gb=0.5)
        generator = torch.Generator().manual_seed(0)
        params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
        llm.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))  # warm-up
        for batch in (1, 8):
            prompts = [torch.randint(100, 40000, (64,), generator=generator).tolist() for _ in range(batch)]
            start = time.perf_counter()
            outputs = llm.generate(prompts, params)
            elapsed = time.perf_counter() - start
            tokens = sum(len(o.token_ids) for o in outputs)
            results[f"batch_{batch}"] = {"elapsed_s": elapsed, "output_tokens": tokens, "output_tok_s": tokens / elapsed}
            print(f"batch {batch:2}: {tokens / elapsed:7.1f} output tok/s ({tokens} tokens in {elapsed:.2f} s)")
    record = {"benchmark": "cpu_generate", **environment(), "cpu_threads": torch.get_num_threads(),
              "cpus": os.cpu_count(),
              "config": {"model": "SmolLM-135M shape, random float32 weights", "prompt_len": 64,
                         "new_tokens": args.new_tokens}, "results": results}
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
