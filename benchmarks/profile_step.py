"""Where a step's GPU time goes: torch.profiler over eager steps of the Llama-3.1-8B shape.

Four steps are profiled: a batch-1 decode, a batch-256 decode at ~1,500 tokens of context, a
mixed step (255 such decodes plus a 2,048-token prompt) and a prefill of 8,192 prompt tokens. For each, the kernels are grouped by name and the top ones
printed with their share of the step's GPU time.

    python benchmarks/profile_step.py [--out benchmarks/results/profile_step.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from llama_shapes import environment, write_model_folder

from gpu_backend import LLM, SamplingParams


def profile_generate(llm: LLM, prompts: list[list[int]], max_tokens: int, skip_steps: int, steps: int,
                     late_prompts: list[list[int]] = ()) -> list[dict]:
    """Add the requests, run ``skip_steps`` unprofiled, add ``late_prompts`` (they join the running
    batch as prefills: a mixed step), then profile ``steps`` steps."""
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = [engine.add_request(p, params, stream=False) for p in prompts]
    for _ in range(skip_steps):
        engine.step()
    ids += [engine.add_request(p, params, stream=False) for p in late_prompts]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    for request_id in ids:
        engine.abort(request_id)
    rows = []
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    for event in sorted(events, key=lambda e: e.device_time_total, reverse=True)[:14]:
        rows.append({"kernel": event.key[:90], "calls_per_step": event.count / steps,
                     "us_per_step": event.device_time_total / steps, "share": event.device_time_total / total})
    rows.append({"kernel": "TOTAL", "us_per_step": total / steps})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)

    def prompt(n: int) -> list[int]:
        return torch.randint(1000, 100000, (n,), generator=generator).tolist()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp) / "llama-3.1-8b-shape")
        llm = LLM(str(folder), device="cuda", dtype="bfloat16", load_format="dummy", skip_tokenizer_init=True,
                  enforce_eager=True, max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=4096,
                  gpu_memory_utilization=0.9, progress=False)
        results["decode_batch_1"] = profile_generate(llm, [prompt(128)], 64, skip_steps=3, steps=20)
        results["decode_batch_256_ctx_1500"] = profile_generate(llm, [prompt(1500) for _ in range(256)], 64,
                                                                skip_steps=60, steps=5)
        results["mixed_255_decodes_plus_2048_prefill"] = profile_generate(
            llm, [prompt(1500) for _ in range(255)], 64, skip_steps=60, steps=1, late_prompts=[prompt(2048)])
        results["prefill_8192"] = profile_generate(llm, [prompt(2048) for _ in range(4)], 4, skip_steps=0, steps=1)
    for name, rows in results.items():
        print(f"\n{name}")
        for row in rows:
            share = f"{row['share'] * 100:5.1f}%" if "share" in row else "      "
            calls = f"{row['calls_per_step']:6.1f}" if "calls_per_step" in row else "      "
            print(f"  {row['us_per_step']:10.1f} us {share} {calls}x  {row['kernel']}")
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "profile_step", **environment(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
