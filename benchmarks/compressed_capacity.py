"""Capacity of ECF kernel mode: the Llama-3.1-70B shape served on one H200, where bf16 leaves no usable KV cache.

Two parts, in one call on one GPU:

- ``bf16``: the shape's weights in bf16 against the card (bytes, and the KV-cache tokens that could
  fit at most if nothing else took memory), then the engine itself tried in child processes with
  random bf16 weights (``load_format="dummy"``): sized automatically at ``--gpu-memory-utilization``,
  and with a fixed KV cache of ``--usable-kv-tokens`` (batch 16 at a 4,096-token context). Each
  attempt fails fast (the allocation or the KV sizing raises) or says what it got.
- ``ecf``: the engine in kernel mode with random compressed weights (``load_format="dummy"``,
  ``compressed_weights="kernel"``): every linear weight is drawn N(0, 0.02) in bf16 and ECF-coded on
  the GPU one checkpoint tensor at a time, so nothing larger than one tensor is ever dense. Recorded:
  time to ready (building, coding, KV sizing, kernel warm-up, CUDA graphs), the KV-cache tokens that
  fit, the weights' bytes and the peak allocated while loading, batch-1 and batch-16 decode tok/s
  (CUDA graphs) with the GB/s of weights read at batch 1 beside the datasheet floor, and a greedy run
  whose tokens are all there and whose log-probabilities are finite (exit 1 otherwise).

    PYTHONPATH=.:sdk python3 benchmarks/compressed_capacity.py --out benchmarks/results/compressed_capacity.json
    python benchmarks/compressed_capacity.py --tiny     # a tiny Llama on CPU: checks the script in seconds

``--tiny`` runs both parts on CPU, where nothing runs out of memory and no CUDA kernel runs: it checks
the attempts, the loading, the measurements and the record, not the capacity.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from compressed_decode import PEAK_BANDWIDTH, TINY_LLAMA, decode_speed, step_weight_bytes, weight_memory
from llama_shapes import LLAMA_3_1_70B, environment, parameter_bytes, write_model_folder

from gpu_backend import LLM, SamplingParams

USABLE_KV_TOKENS = 16 * 4096  # batch 16 at a 4,096-token context
ATTEMPT_TIMEOUT_S = 240
BLOCK_SIZE = 16  # EngineConfig's default: the KV cache's tokens per block


def kv_bytes_per_token(config: dict[str, Any], itemsize: int = 2) -> int:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * itemsize


def bf16_bound(config: dict[str, Any], card_bytes: int | None, utilization: float) -> dict[str, Any]:
    """The bf16 weights against the card: the KV tokens that could fit at most, counting no CUDA
    context, no activations and no allocator slack (a generous bound: the engine gets fewer)."""
    weights = parameter_bytes(config)["total"]
    row: dict[str, Any] = {"weight_bytes": weights, "kv_bytes_per_token": kv_bytes_per_token(config)}
    if card_bytes is not None:
        for name, share in (("at_utilization", utilization), ("whole_card", 1.0)):
            room = card_bytes * share - weights
            row[f"kv_tokens_upper_bound_{name}"] = max(0, int(room // row["kv_bytes_per_token"]))
        row["card_bytes"] = card_bytes
    return row


def attempt_bf16(folder: Path, device: str, utilization: float, num_kv_blocks: int | None) -> dict[str, Any]:
    """The engine over random bf16 weights, in a child process (a failed allocation leaves nothing here)."""
    command = [sys.executable, __file__, "--bf16-attempt", str(folder), "--device", device,
               "--gpu-memory-utilization", str(utilization)]
    if num_kv_blocks is not None:
        command += ["--num-kv-blocks", str(num_kv_blocks)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=ATTEMPT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"fits": None, "error": f"no answer in {ATTEMPT_TIMEOUT_S} s", "seconds": time.perf_counter() - started}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"fits": None, "error": f"exit {done.returncode}: {done.stderr[-800:]}",
                "seconds": time.perf_counter() - started}
    return {**json.loads(lines[-1]), "seconds": time.perf_counter() - started,
            "gpu_memory_utilization": utilization, "num_kv_blocks": num_kv_blocks}


def run_bf16_attempt(folder: Path, device: str, utilization: float, num_kv_blocks: int | None) -> int:
    """Child process: build the bf16 engine, print one JSON line saying whether it fit."""
    options: dict[str, Any] = {"num_kv_blocks": num_kv_blocks} if num_kv_blocks else {}
    if device == "cpu":
        options["kv_cache_memory_gb"] = 0.05
    try:
        llm = LLM(str(folder), device=device, dtype="bfloat16", load_format="dummy", skip_tokenizer_init=True,
                  progress=False, enforce_eager=True, max_num_seqs=16, max_model_len=8192,
                  gpu_memory_utilization=utilization, **options)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not isinstance(error, torch.OutOfMemoryError) and not any(
                sign in str(error) for sign in ("out of memory", "ALLOC_FAILED")):  # e.g. cuBLAS's workspace
            raise
        print(json.dumps({"fits": False, "error": f"{type(error).__name__}: {str(error)[:400]}"}), flush=True)
        return 0
    runner = llm.engine.runner
    print(json.dumps({"fits": True, "error": None, "kv_tokens": runner.num_blocks * runner.block_size}), flush=True)
    return 0


def card_bytes(device: str) -> int | None:
    return torch.cuda.get_device_properties(0).total_memory if device == "cuda" else None


def greedy_check(llm: LLM, vocab_size: int, new_tokens: int) -> dict[str, Any]:
    """Greedy tokens of two prompts: all generated, in the vocabulary, with finite log-probabilities."""
    prompts = [[128000, 791, 6864, 315, 9822, 374], [128000, 40, 1093, 311]]
    prompts = [[token % vocab_size for token in prompt] for prompt in prompts]
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True, logprobs=1)
    outputs = [o.outputs[0] for o in llm.generate(prompts, params)]
    logprobs = [item.logprob for o in outputs for item in (o.logprobs or [])]
    ok = (all(len(o.token_ids) == new_tokens and all(0 <= t < vocab_size for t in o.token_ids) for o in outputs)
          and len(logprobs) == len(prompts) * new_tokens and all(math.isfinite(lp) and lp <= 0 for lp in logprobs))
    return {"ok": ok, "tokens": [o.token_ids for o in outputs], "min_logprob": min(logprobs, default=None)}


def run_ecf(folder: Path, config: dict[str, Any], device: str, args: argparse.Namespace,
            options: dict[str, Any]) -> dict[str, Any]:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    llm = LLM(str(folder), device=device, dtype="bfloat16", load_format="dummy", compressed_weights="kernel",
              skip_tokenizer_init=True, progress=False, max_num_seqs=max(args.batches),
              max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization, **options)
    runner = llm.engine.runner
    row: dict[str, Any] = {"ready_s": time.perf_counter() - started,
                           "kv_tokens": runner.num_blocks * runner.block_size,
                           "kv_cache_bytes": runner.kv_cache.nbytes, "memory_bytes": weight_memory(llm),
                           "cuda_graphs": runner.graphs is not None}
    if device == "cuda":  # what loading, KV sizing, warm-up and graphs took at most beyond what stays held
        row["peak_allocated_until_ready_bytes"] = torch.cuda.max_memory_allocated()
        row["peak_transient_bytes"] = row["peak_allocated_until_ready_bytes"] - torch.cuda.memory_allocated()
    row["usable_kv"] = row["kv_tokens"] >= args.usable_kv_tokens
    print(f"ECF kernel mode: ready in {row['ready_s']:.1f} s, weights {row['memory_bytes']['weights'] / 1e9:.1f} GB "
          f"(+ scratch {row['memory_bytes']['scratch'] / 1e9:.2f}), KV cache {row['kv_tokens']} tokens "
          f"({row['kv_cache_bytes'] / 1e9:.1f} GB)", flush=True)
    row["greedy"] = greedy_check(llm, config["vocab_size"], args.check_tokens)
    print(f"greedy run: tokens and finite log-probabilities: {row['greedy']['ok']}", flush=True)
    read = step_weight_bytes(row["memory_bytes"], config)
    row["weight_bytes_read_per_step"] = read
    peak = next((v for k, v in PEAK_BANDWIDTH.items() if device == "cuda" and k in torch.cuda.get_device_name(0)), None)
    for batch in args.batches:
        speed, _ = decode_speed(llm, device, batch, args.prompt_len, args.new_tokens, args.repeats)
        row[f"batch{batch}"] = speed
        print(f"batch {batch:3}: {speed['decode_tok_s']:8.1f} tok/s decode, TTFT {speed['ttft_s'] * 1000:.0f} ms"
              + (f"  ({speed['decode_tok_s'] * read / 1e9:.0f} GB/s of weights; floor {peak / read:.1f} tok/s at "
                 f"{peak / 1e12:.1f} TB/s)" if peak and batch == 1 else ""), flush=True)
    row["batch1_weight_GB_s"] = row[f"batch{args.batches[0]}"]["decode_tok_s"] * read / 1e9
    row["batch1_floor_tok_s"] = peak / read if peak else None
    return row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,16", help="decode batch sizes (the first must be 1)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--check-tokens", type=int, default=16, help="tokens of the greedy sanity run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.92)
    parser.add_argument("--usable-kv-tokens", type=int, default=USABLE_KV_TOKENS)
    parser.add_argument("--num-layers", type=int, help="fewer decoder layers than the shape's, for a shorter run")
    parser.add_argument("--skip-bf16", action="store_true", help="no bf16 attempts (the bound is still computed)")
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama on CPU, few tokens")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--bf16-attempt", type=Path, help=argparse.SUPPRESS)  # the child process of attempt_bf16
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--num-kv-blocks", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def main() -> int:
    args = parse_args()
    if args.bf16_attempt is not None:
        return run_bf16_attempt(args.bf16_attempt, args.device, args.gpu_memory_utilization, args.num_kv_blocks)
    if args.tiny:
        config, device = TINY_LLAMA, "cpu"
        args.batches = [b for b in args.batches if b <= 4] or [1]
        args.repeats, args.new_tokens, args.prompt_len, args.check_tokens = 3, min(args.new_tokens, 32), 16, 6
        args.max_model_len, args.usable_kv_tokens = 256, 4 * 256
        options: dict[str, Any] = {"enforce_eager": True, "kv_cache_memory_gb": 0.05}
    else:
        if not torch.cuda.is_available():
            print("needs a CUDA GPU (or --tiny for the CPU check)", file=sys.stderr)
            return 2
        config, device, options = LLAMA_3_1_70B, "cuda", {}
    if args.num_layers:
        config = {**config, "num_hidden_layers": args.num_layers}
    record: dict[str, Any] = {
        "benchmark": "compressed_capacity",
        "config": {"model": "tiny Llama" if args.tiny else "Llama-3.1-70B shape", "num_layers": config["num_hidden_layers"],
                   "weights": "random N(0, 0.02) bf16, ECF-coded on the device tensor by tensor",
                   "batches": args.batches, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                   "repeats": args.repeats,
                   "timing": "decode: median over repeats of full run - TTFT", "max_model_len": args.max_model_len,
                   "gpu_memory_utilization": args.gpu_memory_utilization, "usable_kv_tokens": args.usable_kv_tokens},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp) / "shape", config)
        attempts = {}
        if not args.skip_bf16:  # first, while this process holds no CUDA context: the children get the whole card
            attempts["auto_sized"] = attempt_bf16(folder, device, args.gpu_memory_utilization, None)
            attempts["usable_kv"] = attempt_bf16(folder, device, args.gpu_memory_utilization,
                                                 -(-args.usable_kv_tokens // BLOCK_SIZE))
        record.update(environment())
        card = card_bytes(device)
        bf16 = {**bf16_bound(config, card, args.gpu_memory_utilization), **attempts}
        print(f"bf16 weights {bf16['weight_bytes'] / 1e9:.1f} GB" + (
            f" on a {card / 1e9:.1f} GB card: at most {bf16['kv_tokens_upper_bound_at_utilization']} KV tokens at "
            f"utilization {args.gpu_memory_utilization}, {bf16['kv_tokens_upper_bound_whole_card']} with the whole card "
            f"and nothing else (usable: {args.usable_kv_tokens})" if card else ""), flush=True)
        for name, attempt in attempts.items():
            print(f"bf16 engine, {name}: fits {attempt['fits']} ({attempt['seconds']:.1f} s) "
                  f"{attempt.get('error') or ''}", flush=True)
        record["bf16"] = bf16
        if args.out:  # a call that runs out of time keeps the bf16 part
            args.out.write_text(json.dumps(record, indent=2) + "\n")
        record["ecf"] = run_ecf(folder, config, device, args, options)
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if record["ecf"]["greedy"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
