"""Decode speed and weight memory of ECF-compressed weights against bf16, on a Llama-3.1-8B-shaped model.

Random N(0, 0.02) bfloat16 weights are made layer by layer (on the GPU when there is one) and
written straight into an ECF folder by the compressor (``compress_tensors``), never as a dense
checkpoint. Three variants then run one after the other in this process, on the same GPU:

- ``bf16``: the plain engine over random bf16 weights (``load_format="dummy"``), the usual baseline, on
  the faster dense GEMV (``DENSE_GEMV = "tiles"``);
- ``ecf-decode-at-load``: the ECF folder decoded to dense bf16 while loading; the same weights as
  ecf-kernel, in bf16, on the dense GEMV that sums as the ECF GEMV does (``DENSE_GEMV = "phases"``,
  with the separate norm and SiLU kernels, as ECF runs them), so its greedy tokens are what ecf-kernel
  must reproduce, and beside ``bf16`` (the faster ``"tiles"`` form) it times that form, the default;
- ``ecf-kernel``: the ECF folder kept coded in GPU memory, decoded inside the batch-1 GEMV and into
  a scratch buffer for batches and prefill (``compressed_weights="kernel"``);
- ``ecf-kernel-tuned`` (not run unless named): ecf-kernel with the GEMV's rows a program and loading
  ahead per shape from ``--gemv-tuning FILE`` (the record of ``ecf_gemv_probe.py --block-n``);
- ``ecf-scratch`` (not run unless named): kept coded, but batch 1 too decodes into the scratch
  buffer and runs the bf16 GEMV on it (``triton_linear.FUSED_ECF_DECODE = False``);
- ``ecf-decode-at-load-gemm`` and ``ecf-kernel-gemm`` (not run unless named): the two above with batches
  of 2..64 rows on the phase GEMM (``triton_linear.BATCH_GEMM = "phases"``, kernels/triton_gemm.py)
  instead of cuBLAS: the dense weights loaded as they are, the coded ones decoded in its registers;
  with ``--gemm-tuning FILE`` (the record of ``gemm_probe.py``) at its best launch per shape;
- ``ecf-decode-at-load-gemm128`` and ``ecf-kernel-gemm128`` (not run unless named): the two -gemm variants with
  every weight in K tiles of 128 columns (``planes.tiles_at_most`` while loading and running): the dense
  weights as they are, the coded planes made in those tiles, the batch-1 GEMVs taking 8 a step; the GEMM's
  launches from the record's ``best_tile128``.

Per variant: time to ready, the GPU memory its weights take (parameters, compressed planes and the
decode scratch buffer), batch-1 and batch-N decode tok/s (CUDA graphs), the time of one prefill,
and the GB/s of weight bytes read per decode step beside the floor set by the datasheet bandwidth.
The greedy tokens of ecf-kernel and ecf-decode-at-load must be identical (batch 1 and batch N), and
those of ecf-kernel-gemm and ecf-decode-at-load-gemm; the script exits 1 when they are not.

    PYTHONPATH=.:sdk python3 benchmarks/compressed_decode.py [--out benchmarks/results/compressed_decode.json]
    python benchmarks/compressed_decode.py --tiny     # a tiny bf16 Llama on CPU: checks the script
    ... --num-layers 8                                # fewer layers, for a shorter device call

On CPU the engine always decodes ECF weights at load (the kernels are CUDA's), so ``--tiny``
checks the folder writing, the loading, the measurements and the token comparison, not the kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ecf_gemv_probe import load_tuning
from gemm_probe import SMALL_TILE, load_gemm_tuning
from llama_shapes import LLAMA_3_1_8B, environment, parameter_bytes, write_model_folder

from gpu_backend import LLM, SamplingParams
from gpu_backend.layers.linear import LinearBase
from gpu_backend.weights import compress_tensors, planes
from gpu_backend.weights.packed import held_weight_bytes, scratch_bytes

PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}  # datasheet HBM bandwidth, bytes/s
TINY_LLAMA: dict[str, Any] = {
    **LLAMA_3_1_8B,
    "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 4096,
    "rope_scaling": None, "bos_token_id": 1, "eos_token_id": 2,
}
VARIANTS = ("bf16", "ecf-decode-at-load", "ecf-kernel")


def write_ecf_folder(folder: Path, config: dict[str, Any], device: str, seed: int = 0) -> dict[str, Any]:
    """The model's weights, random N(0, 0.02) in bfloat16 (norms 1), one ECF file per layer."""
    write_model_folder(folder, config)
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    d = config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    generator = torch.Generator(device=device).manual_seed(seed)

    def random(*shape: int) -> torch.Tensor:
        return (0.02 * torch.randn(shape, generator=generator, device=device)).to(torch.bfloat16)  # coded there

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=torch.bfloat16)

    files = {"model-outer.safetensors": [("model.embed_tokens.weight", lambda: random(v, h)),
                                         ("lm_head.weight", lambda: random(v, h)), ("model.norm.weight", lambda: ones(h))]}
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        files[f"model-layer-{layer:03d}.safetensors"] = [
            (p + "self_attn.q_proj.weight", lambda: random(q, h)), (p + "self_attn.k_proj.weight", lambda: random(kv, h)),
            (p + "self_attn.v_proj.weight", lambda: random(kv, h)), (p + "self_attn.o_proj.weight", lambda: random(h, q)),
            (p + "mlp.gate_proj.weight", lambda: random(i, h)), (p + "mlp.up_proj.weight", lambda: random(i, h)),
            (p + "mlp.down_proj.weight", lambda: random(h, i)),
            (p + "input_layernorm.weight", lambda: ones(h)), (p + "post_attention_layernorm.weight", lambda: ones(h)),
        ]
    started = time.perf_counter()
    written = cast = escapes = 0
    for name, tensors in files.items():
        summary = compress_tensors(((tensor_name, make()) for tensor_name, make in tensors), folder / name)
        written, cast, escapes = written + summary.written_bytes, cast + summary.cast_bytes, escapes + summary.num_escapes
    return {"seconds": time.perf_counter() - started, "bf16_bytes": cast, "ecf_bytes": written,
            "ratio": written / cast, "escapes": escapes}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def decode_speed(llm: LLM, device: str, batch: int, prompt_len: int, new_tokens: int, repeats: int
                 ) -> tuple[dict[str, float], list[list[int]]]:
    """Decode tok/s of ``batch`` sequences at once (first token excluded: each repeat's time to the first
    token is taken from its full run's, and the median of those differences is the decode time), and
    their greedy tokens."""
    gen = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(3, 400, (prompt_len,), generator=gen).tolist() for _ in range(batch)]
    greedy = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    first = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))  # warm-up
    ttfts, totals, decodes, tokens = [], [], [], []
    for _ in range(repeats):
        llm.engine.block_manager.reset_prefix_cache()
        _sync(device)
        start = time.perf_counter()
        llm.generate(prompts, first)
        ttfts.append(time.perf_counter() - start)
        llm.engine.block_manager.reset_prefix_cache()
        start = time.perf_counter()
        outputs = llm.generate(prompts, greedy)
        totals.append(time.perf_counter() - start)
        decodes.append(totals[-1] - ttfts[-1])  # each repeat's pair, back to back
        tokens = [o.outputs[0].token_ids for o in outputs]
    decode = sorted(decodes)[len(decodes) // 2]
    if decode <= 0:
        raise RuntimeError(f"decoding {new_tokens} tokens took no longer than the first token ({decodes} s): "
                           f"too short to time, pass more --new-tokens")
    return {"ttft_s": min(ttfts), "total_s": min(totals), "decode_tok_s": batch * (new_tokens - 1) / decode}, tokens


def prefill_seconds(llm: LLM, device: str, prompt_len: int, repeats: int) -> float:
    prompt = torch.randint(3, 400, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    llm.generate([prompt], one)
    best = float("inf")
    for _ in range(repeats):
        llm.engine.block_manager.reset_prefix_cache()
        _sync(device)
        start = time.perf_counter()
        llm.generate([prompt], one)
        best = min(best, time.perf_counter() - start)
    return best


def weight_memory(llm: LLM) -> dict[str, int]:
    """Bytes the model's weights take: parameters and compressed planes, and the scratch buffer."""
    model = llm.engine.runner.model
    linears = [m for m in model.modules() if isinstance(m, LinearBase)]
    return {"weights": held_weight_bytes(model), "scratch": scratch_bytes(model),
            "linear_dense": sum(m.weight.nbytes for m in linears),
            "linear_compressed": sum(m.compressed.nbytes for m in linears if m.compressed is not None)}


def step_weight_bytes(memory: dict[str, int], config: dict[str, Any]) -> int:
    """Weight bytes one decode step reads: every linear layer as held, the LM head (dense) and the norms
    (the embedding is only indexed)."""
    h, v = config["hidden_size"], config["vocab_size"]
    norms = (2 * config["num_hidden_layers"] + 1) * h * 2
    return memory["linear_dense"] + memory["linear_compressed"] + v * h * 2 + norms


@contextlib.contextmanager
def kernel_settings(variant: str, device: str, gemv_tuning: Path | None, gemm_tuning: Path | None) -> Iterator[None]:
    """The kernels' settings ``variant`` runs with (module docstring), the defaults again after it. The
    -gemm128 variants take K tiles of 128 while their planes are made at load and for every launch."""
    narrow = planes.tiles_at_most(SMALL_TILE) if variant.endswith("-gemm128") else contextlib.nullcontext()
    if device != "cuda":  # no kernel runs on CPU
        with narrow:
            yield
        return
    from gpu_backend.kernels import triton_gemm, triton_linear

    # bf16 on the faster dense form; the others on the default one, which sums as the ECF GEMV does (the dense
    # LM head of kernel mode included)
    triton_linear.DENSE_GEMV = "tiles" if variant == "bf16" else "phases"
    triton_linear.FUSED_ECF_DECODE = variant != "ecf-scratch"
    triton_linear.PHASE_GEMV_TUNING = load_tuning(gemv_tuning) if variant == "ecf-kernel-tuned" else {}
    on_gemm = variant.endswith(("-gemm", "-gemm128"))
    triton_linear.BATCH_GEMM = "phases" if on_gemm else "cublas"
    tuning_key = "best_tile128" if variant.endswith("-gemm128") else "best"
    triton_gemm.TUNING = load_gemm_tuning(gemm_tuning, tuning_key) if on_gemm and gemm_tuning else {}
    try:
        with narrow:
            yield
    finally:
        triton_linear.DENSE_GEMV, triton_linear.FUSED_ECF_DECODE = "phases", True
        triton_linear.PHASE_GEMV_TUNING, triton_linear.BATCH_GEMM, triton_gemm.TUNING = {}, "cublas", {}


def measure(folder: Path, llm_options: dict[str, Any], device: str, batches: list[int], prompt_len: int,
            new_tokens: int, prefill_len: int, repeats: int) -> tuple[dict[str, Any], dict[int, list[list[int]]]]:
    """One variant's engine: time to ready, weight memory, decode at each batch and one prefill; and its
    greedy tokens by batch."""
    _sync(device)
    started = time.perf_counter()
    llm = LLM(str(folder), device=device, dtype="bfloat16", skip_tokenizer_init=True, progress=False, **llm_options)
    row: dict[str, Any] = {"ready_s": time.perf_counter() - started, "memory_bytes": weight_memory(llm),
                           "kv_cache_bytes": llm.engine.runner.kv_cache.nbytes}
    if device == "cuda":
        row["cuda_allocated_minus_kv_bytes"] = torch.cuda.memory_allocated() - row["kv_cache_bytes"]
    tokens = {}
    for batch in batches:
        row[f"batch{batch}"], tokens[batch] = decode_speed(llm, device, batch, prompt_len, new_tokens, repeats)
    row["prefill_s"] = prefill_seconds(llm, device, prefill_len, repeats)
    del llm
    return row, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,32,64", help="decode batch sizes (the first must be 1)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prefill-len", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--gemv-tuning", type=Path,
                        help="ecf_gemv_probe.py --block-n record: the GEMV settings of ecf-kernel-tuned")
    parser.add_argument("--gemm-tuning", type=Path,
                        help="gemm_probe.py record: the phase GEMM's launches of the -gemm variants")
    parser.add_argument("--num-layers", type=int, help="fewer decoder layers than the shape's, for a shorter run")
    parser.add_argument("--tiny", action="store_true", help="a tiny bf16 Llama on CPU, few tokens")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if "ecf-kernel-tuned" in args.variants.split(",") and not args.gemv_tuning:
        parser.error("ecf-kernel-tuned needs --gemv-tuning FILE")
    if args.tiny:
        config, device, batches, args.repeats = TINY_LLAMA, "cpu", [b for b in batches if b <= 4] or [1], 1
        new_tokens, prompt_len, prefill_len = min(args.new_tokens, 12), min(args.prompt_len, 16), 64
        options: dict[str, Any] = {"enforce_eager": True, "kv_cache_memory_gb": 0.1}
    else:
        if not torch.cuda.is_available():
            print("needs a CUDA GPU (or --tiny for the CPU check)", file=sys.stderr)
            return 2
        config, device = LLAMA_3_1_8B, "cuda"
        new_tokens, prompt_len, prefill_len = args.new_tokens, args.prompt_len, args.prefill_len
        options = {"gpu_memory_utilization": 0.85}
    if args.num_layers:
        config = {**config, "num_hidden_layers": args.num_layers}
    peak = PEAK_BANDWIDTH.get(next((k for k in PEAK_BANDWIDTH if device == "cuda" and k in torch.cuda.get_device_name(0)),
                                   ""))
    results: dict[str, Any] = {}
    tokens: dict[str, dict[int, list[list[int]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dense_folder = write_model_folder(Path(tmp) / "dense-shape", config)
        ecf_folder = Path(tmp) / "ecf"
        made = write_ecf_folder(ecf_folder, config, device)
        print(f"ECF folder: {made['ecf_bytes'] / 1e9:.2f} GB for {made['bf16_bytes'] / 1e9:.2f} GB of bf16 "
              f"(ratio {made['ratio']:.3f}, {made['escapes']} escapes), written in {made['seconds']:.1f} s", flush=True)
        for variant in args.variants.split(","):
            folder, extra = {
                "bf16": (dense_folder, {"load_format": "dummy"}),
                "ecf-decode-at-load": (ecf_folder, {"compressed_weights": "decode_at_load"}),
                "ecf-decode-at-load-gemm": (ecf_folder, {"compressed_weights": "decode_at_load"}),
                "ecf-kernel": (ecf_folder, {"compressed_weights": "kernel"}),
                "ecf-kernel-gemm": (ecf_folder, {"compressed_weights": "kernel"}),
                "ecf-decode-at-load-gemm128": (ecf_folder, {"compressed_weights": "decode_at_load"}),
                "ecf-kernel-gemm128": (ecf_folder, {"compressed_weights": "kernel"}),
                "ecf-kernel-tuned": (ecf_folder, {"compressed_weights": "kernel"}),
                "ecf-scratch": (ecf_folder, {"compressed_weights": "kernel"}),
            }[variant]
            with kernel_settings(variant, device, args.gemv_tuning, args.gemm_tuning):
                llm_options = {"max_num_seqs": max(batches),
                               "max_model_len": max(prefill_len, prompt_len + new_tokens) + 16, **extra, **options}
                row, tokens[variant] = measure(folder, llm_options, device, batches, prompt_len, new_tokens,
                                               prefill_len, args.repeats)
            read = step_weight_bytes(row["memory_bytes"], config)
            row["weight_bytes_read_per_step"] = read
            row["batch1_weight_GB_s"] = row["batch1"]["decode_tok_s"] * read / 1e9
            results[variant] = row
            memory = row["memory_bytes"]
            print(f"{variant:23} ready {row['ready_s']:6.1f} s  weights {memory['weights'] / 1e9:6.2f} GB "
                  f"(+ scratch {memory['scratch'] / 1e9:.2f})  "
                  + "  ".join(f"batch {b}: {row[f'batch{b}']['decode_tok_s']:8.1f} tok/s" for b in batches)
                  + f"  prefill {prefill_len}: {row['prefill_s'] * 1000:7.1f} ms  "
                  f"{row['batch1_weight_GB_s']:6.0f} GB/s of weights at batch 1"
                  + (f" (floor {peak / read:.0f} tok/s at {peak / 1e12:.2f} TB/s)" if peak else ""), flush=True)
            gc.collect()  # the model and its graphs sit in reference cycles
            if device == "cuda":
                torch.cuda.empty_cache()
    identical = None
    for variant, reference in (("ecf-kernel", "ecf-decode-at-load"), ("ecf-kernel-tuned", "ecf-decode-at-load"),
                               ("ecf-scratch", "ecf-decode-at-load"), ("ecf-kernel-gemm", "ecf-decode-at-load-gemm"),
                               ("ecf-kernel-gemm128", "ecf-decode-at-load-gemm128")):
        if variant in tokens and reference in tokens:
            same = tokens[variant] == tokens[reference]
            identical = same if identical is None else identical and same
            print(f"greedy tokens of {variant} and {reference} identical: {same}")
    if "bf16" in results:
        base = results["bf16"]
        for variant in results:
            if variant != "bf16":
                print(f"{variant} / bf16: " + "  ".join(
                    f"batch {b} {results[variant][f'batch{b}']['decode_tok_s'] / base[f'batch{b}']['decode_tok_s']:.3f}x"
                    for b in batches)
                    + f"  prefill {base['prefill_s'] / results[variant]['prefill_s']:.3f}x  weight memory "
                    f"{results[variant]['memory_bytes']['weights'] / base['memory_bytes']['weights']:.3f}")
    record = {
        "benchmark": "compressed_decode", **environment(),
        "config": {"model": "tiny Llama" if args.tiny else "Llama-3.1-8B shape", "weights": "random N(0, 0.02) bf16",
                   "batches": batches, "prompt_len": prompt_len, "new_tokens": new_tokens, "prefill_len": prefill_len,
                   "repeats": args.repeats,
                   "timing": "TTFT and prefill: best of repeats; decode: median over repeats of full run - TTFT"},
        "ecf_folder": made, "bf16_weight_bytes_read_per_token": parameter_bytes(config)["read_per_token"],
        "greedy_tokens_identical": identical, "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if identical in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
