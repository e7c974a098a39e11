"""How much smaller ECF-compressed weights are than bfloat16 safetensors, next to the lossless limit,
and how fast the plain-torch decoder restores them on CPU.

Per checkpoint: tiny-shakespeare (trained, bfloat16), MiniLM (trained, float32 cast to bfloat16) and
random N(0, 0.02) bfloat16 weights of Llama-3.1-8B's shape (``--layers`` decoder layers, default 1:
every layer has the same shapes and statistics). Reported: file ratio against the same tensors as a
bfloat16 safetensors file; the exponent entropy (pooled over all weights) and the entropy limit
(each coded tensor's exponents at its own entropy, sign and mantissa as they are, the rest raw);
escape rate; bits per coded weight; the estimated ratio had the exponent index 3 or 5 bits; and the
CPU decode time of every tensor (checksums included), and on a GPU, when there is one, the
plain-torch decode time of every coded tensor with its parts already on the GPU.

    PYTHONPATH=.:sdk python3 benchmarks/weight_compression.py [--layers 1] [--out benchmarks/results/weight_compression.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from llama_shapes import LLAMA_3_1_8B, cpu_name, environment

from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.loader import weight_files
from gpu_backend.weights import compress_checkpoint, open_weights
from gpu_backend.weights.codec import decode_parts, exponent_histogram
from gpu_backend.weights.compress import is_worth_coding
from gpu_backend.weights.format import CODED

ESCAPE_BYTES = 4 + 2  # column (int32) and bfloat16 bits
ROW_OFFSET_BYTES = 4
TABLE_BYTES = 16
DECODE_REPEATS = 3


def random_llama_folder(folder: Path, num_layers: int) -> Path:
    """Random N(0, 0.02) bfloat16 weights of Llama-3.1-8B's decoder layers (norms at 1), plus config.json."""
    c = LLAMA_3_1_8B
    h, i, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    shapes = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, q), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(num_layers):
        for name, shape in shapes.items():
            tensors[f"model.layers.{layer}.{name}.weight"] = (0.02 * torch.randn(shape, generator=generator)).bfloat16()
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{layer}.{norm}.weight"] = torch.ones(h, dtype=torch.bfloat16)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({**c, "num_hidden_layers": num_layers}))
    return folder


def bf16_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in weight_files(folder):
        with open_weights(file) as handle:
            for name in handle.keys():  # noqa: SIM118
                tensor = handle.get_tensor(name)
                tensors[name] = tensor.bfloat16() if tensor.is_floating_point() else tensor
    return tensors


def entropy_bits(histogram: torch.Tensor) -> float:
    p = histogram[histogram > 0].double() / histogram.sum()
    return float(-(p * p.log2()).sum())


def estimated_ratio(tensors: dict[str, torch.Tensor], index_bits: int) -> float:
    """File-free estimate of the coded size with a ``index_bits``-bit exponent index (2**bits - 1 in the table)."""
    total = coded = 0
    for tensor in tensors.values():
        raw = tensor.numel() * tensor.element_size()
        total += raw
        if not is_worth_coding(tensor):
            coded += raw
            continue
        counts = exponent_histogram(tensor).sort(descending=True).values
        escapes = int(counts[2**index_bits - 1:].sum())
        size = (tensor.numel() * (8 + index_bits) + 7) // 8 + escapes * ESCAPE_BYTES \
            + (tensor.shape[0] + 1) * ROW_OFFSET_BYTES + TABLE_BYTES
        coded += min(size, raw)
    return coded / total


def gpu_decode_s(folder: Path) -> float | None:
    """Seconds the plain-torch decoder takes on the GPU for every coded tensor, parts already there
    (what decoding a whole model at load costs there, and a bound on a per-layer decode-to-scratch)."""
    if not torch.cuda.is_available():
        return None
    coded = []
    for file in weight_files(folder):
        with open_weights(file) as handle:
            for name, entry in handle.header.tensors.items():
                if entry.encoding == CODED:
                    parts = {k: v.cuda() for k, v in handle.get_slice(name).parts().items()}
                    coded.append((parts, entry.torch_dtype, entry.shape))
    for parts, dtype, shape in coded[:2]:  # warm-up
        decode_parts(parts, dtype, shape)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for parts, dtype, shape in coded:
        decode_parts(parts, dtype, shape)
    torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(name: str, src: Path, tmp: Path) -> dict:
    tensors = bf16_tensors(src)
    bf16_file = tmp / f"{name}.bf16.safetensors"
    save_file(tensors, str(bf16_file), metadata={"format": "pt"})
    started = time.perf_counter()
    summary = compress_checkpoint(src, tmp / name, weight_files(src), dtype=torch.bfloat16, progress=False)
    compress_s = time.perf_counter() - started
    compressed_file_bytes = sum(f.stat().st_size for f in weight_files(tmp / name))

    pooled = torch.zeros(256, dtype=torch.int64)
    limit_bytes = 0.0
    for tensor in tensors.values():
        raw = tensor.numel() * tensor.element_size()
        if not tensor.is_floating_point():
            limit_bytes += raw
            continue
        histogram = exponent_histogram(tensor)
        pooled += histogram
        limit_bytes += tensor.numel() * (8 + entropy_bits(histogram)) / 8 if is_worth_coding(tensor) else raw
    tensor_bytes = sum(t.numel() * t.element_size() for t in tensors.values())

    decode_runs = []
    for _ in range(DECODE_REPEATS):
        started = time.perf_counter()
        decoded = bf16_tensors(tmp / name)  # every tensor read, checked against its checksums and decoded
        decode_runs.append(time.perf_counter() - started)
    decode_s = statistics.median(decode_runs)
    assert all(torch.equal(decoded[k].view(torch.uint8), tensors[k].view(torch.uint8)) for k in tensors
               if tensors[k].is_floating_point()), f"{name} did not round-trip"
    on_gpu = gpu_decode_s(tmp / name)
    result = {
        "weights": sum(t.numel() for t in tensors.values()),
        "bf16_file_bytes": bf16_file.stat().st_size,
        "compressed_file_bytes": compressed_file_bytes,
        "ratio_vs_bf16_file": compressed_file_bytes / bf16_file.stat().st_size,
        "ratio_vs_bf16_tensor_bytes": summary.written_bytes / tensor_bytes,
        "exponent_entropy_bits_pooled": entropy_bits(pooled),
        "entropy_limit_ratio": limit_bytes / tensor_bytes,
        "coded_tensors": summary.num_coded, "raw_tensors": summary.num_raw,
        "coded_weights_fraction": summary.num_coded_weights / sum(t.numel() for t in tensors.values()),
        "escape_rate": summary.num_escapes / max(1, summary.num_coded_weights),
        "estimated_ratio_by_index_bits": {bits: estimated_ratio(tensors, bits) for bits in (3, 4, 5)},
        "compress_s": compress_s,
        "cpu_decode_s": decode_s,  # median of DECODE_REPEATS
        "cpu_decode_runs_s": decode_runs,
        "cpu_decode_gb_s": tensor_bytes / decode_s / 1e9,
        "gpu_decode_s": on_gpu,  # None: no GPU here
        "gpu_decode_gb_s": tensor_bytes / on_gpu / 1e9 if on_gpu else None,
    }
    print(f"{name:18} ratio {result['ratio_vs_bf16_file']:.4f} of bf16 safetensors "
          f"({1 - result['ratio_vs_bf16_file']:.1%} smaller); entropy limit {result['entropy_limit_ratio']:.4f} "
          f"(exponent entropy {result['exponent_entropy_bits_pooled']:.2f} bits); escapes "
          f"{result['escape_rate']:.3%}; est. 3/4/5-bit index "
          + "/".join(f"{r:.3f}" for r in result["estimated_ratio_by_index_bits"].values())
          + f"; CPU decode {decode_s:.2f} s ({result['cpu_decode_gb_s']:.2f} GB/s of bf16)"
          + (f"; GPU decode {on_gpu * 1e3:.1f} ms ({result['gpu_decode_gb_s']:.0f} GB/s)" if on_gpu else ""))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=1, help="decoder layers of the random Llama-3.1-8B shape")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        random_folder = random_llama_folder(tmp / "random-src", args.layers)
        sources = {"tiny-shakespeare": builtin_model_path("@cf/edgewise/tiny-shakespeare"),
                   "minilm-l6-v2": builtin_model_path("@cf/sentence-transformers/all-minilm-l6-v2"),
                   f"random-llama-8b-{args.layers}-layer": random_folder}
        for name, src in sources.items():
            results[name] = measure(name, src, tmp)
    record = {"benchmark": "weight_compression", **environment(), "cpu": cpu_name(),
              "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "config": {"format": "edgewise.ecf v1 (4-bit exponent index, 12 bits per bfloat16 weight)",
                         "baseline": "the same tensors in a bfloat16 safetensors file",
                         "random": f"N(0, 0.02) bfloat16, Llama-3.1-8B decoder layer shapes x {args.layers}",
                         "entropy_limit": "each coded tensor at 8 + H(exponent) bits, other tensors raw"},
              "results": results}
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    assert math.isfinite(sum(r["ratio_vs_bf16_file"] for r in results.values()))


if __name__ == "__main__":
    main()
