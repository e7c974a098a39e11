"""KV transfer between a prefill and a decode instance: effective bandwidth of one prompt's hand-off.

A world of a prefill instance (``--prefill-tp`` ranks) and a decode instance (``--decode-tp`` ranks),
one GPU each (NCCL), or processes on the CPU (Gloo, ``--device cpu``: a smoke run). The prefill
ranks fill their caches with random KV for a prompt of ``--prompt-tokens`` tokens of the
Llama-3.1-8B shape (32 layers, 8 KV heads of 128, bf16 on GPUs) in scattered blocks; each
repeat moves it into other scattered blocks of the decode ranks with the engine's own calls
(``disagg/kv_transfer.py``: ``send_kv``, ``post_receive_kv``, ``land``), whole or in
``--chunk-blocks`` chunks as prefill steps would, and checks every value that landed. Time is
from a barrier to the last rank's landing; bandwidth is the prompt's KV bytes over that time
(each byte crosses once). Layouts needing more GPUs than the machine has are recorded as skipped.

    python benchmarks/kv_transfer.py [--prompt-tokens 8192] [--chunk-blocks 0,64] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from gpu_backend.disagg.kv_transfer import KVLayout, plan_transfer, post_receive_kv, send_kv  # noqa: E402
from gpu_backend.parallel.groups import InstanceLayout  # noqa: E402
from gpu_backend.cluster.launch import free_port  # noqa: E402
from llama_shapes import LLAMA_3_1_8B, environment  # noqa: E402

BLOCK_SIZE = 16
RESULTS = ROOT / "benchmarks" / "results" / "kv_transfer.json"


def layouts(args: argparse.Namespace) -> tuple[KVLayout, KVLayout]:
    layers, heads = LLAMA_3_1_8B["num_hidden_layers"], LLAMA_3_1_8B["num_key_value_heads"]
    return (KVLayout(InstanceLayout(0, tp_size=args.prefill_tp), layers, heads),
            KVLayout(InstanceLayout(args.prefill_tp, tp_size=args.decode_tp), layers, heads))


def run_rank(rank: int, world_size: int, port: int, args: argparse.Namespace, out: str) -> None:
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=120))
    try:
        result = _transfers(rank, device, args)
        if rank == world_size - 1:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _transfers(rank: int, device: torch.device, args: argparse.Namespace) -> dict:
    src, dst = layouts(args)
    routes = plan_transfer(src, dst)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    num_blocks = math.ceil(args.prompt_tokens / BLOCK_SIZE)
    generator = torch.Generator().manual_seed(0)
    pool = 2 * num_blocks + 7  # scattered blocks on both sides, as a busy cache has them
    src_ids = torch.randperm(pool, generator=generator)[:num_blocks].tolist()
    dst_ids = torch.randperm(pool, generator=generator)[:num_blocks].tolist()
    sending = rank in src.instance.ranks
    layout = src if sending else dst
    shape = (2, len(layout.layers_of(rank)), pool, BLOCK_SIZE, len(layout.heads_of(rank)), 128)
    values = torch.Generator(device).manual_seed(rank)
    cache = (torch.randn(shape, generator=values, device=device).to(dtype) if sending
             else torch.zeros(shape, dtype=dtype, device=device))
    results = {}
    for chunk in args.chunk_blocks:
        size = chunk or num_blocks
        pieces = [range(start, min(start + size, num_blocks)) for start in range(0, num_blocks, size)]
        times = []
        for repeat in range(args.warmup + args.repeats):
            if not sending:
                cache.zero_()
            _synchronize(device)
            dist.barrier()
            started = time.perf_counter()
            if sending:
                for pending in [send_kv(cache, src, routes, rank, [src_ids[i] for i in piece]) for piece in pieces]:
                    pending.wait()
            else:
                received = [post_receive_kv(cache, dst, routes, rank, [dst_ids[i] for i in piece]) for piece in pieces]
                for pending in received:
                    pending.wait()
                    pending.land()
            _synchronize(device)
            elapsed = torch.tensor([time.perf_counter() - started], dtype=torch.float64, device=device)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank's
            if repeat >= args.warmup:
                times.append(float(elapsed.item()))
        results[str(chunk or "whole")] = {"seconds": times, "chunks": len(pieces), "verified": _verify(
            cache, sending, src, dst, rank, src_ids, dst_ids)}
    return results


def _verify(cache: torch.Tensor, sending: bool, src: KVLayout, dst: KVLayout, rank: int, src_ids: list[int],
            dst_ids: list[int]) -> bool:
    """Every decode rank's landed values against the prefill ranks' caches, by checksums of each
    (layer, head) slice gathered from every rank."""
    layers, heads = src.num_layers, src.num_kv_heads
    sums = torch.zeros(2, layers, heads, dtype=torch.float64, device=cache.device)
    layout, ids = (src, src_ids) if sending else (dst, dst_ids)
    local = cache[:, :, ids].double().sum(dim=(2, 3, 5))  # [2, layers here, heads here]
    mine_l, mine_h = layout.layers_of(rank), layout.heads_of(rank)
    if sending:  # replicas hold the same heads: count each (layer, head) once
        first_replica = (rank - src.instance.first_rank) % src.instance.tp_size % src.kv_replicas == 0
        if first_replica:
            sums[:, mine_l.start:mine_l.stop, mine_h.start:mine_h.stop] = local
    else:
        first_replica = (rank - dst.instance.first_rank) % dst.instance.tp_size % dst.kv_replicas == 0
        if first_replica:
            sums[:, mine_l.start:mine_l.stop, mine_h.start:mine_h.stop] = -local
    dist.all_reduce(sums)
    return bool(sums.abs().max() <= 1e-6 * max(1.0, float(local.abs().max())))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kv_bytes(args: argparse.Namespace) -> int:
    itemsize = 2 if args.device == "cuda" else 4
    config = LLAMA_3_1_8B
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * 128 * args.prompt_tokens * itemsize


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt-tokens", type=int, default=8192)
    parser.add_argument("--prefill-tp", type=int, default=1)
    parser.add_argument("--decode-tp", type=int, default=1)
    parser.add_argument("--chunk-blocks", default="0,64", help="blocks per message; 0: the whole prompt at once")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.chunk_blocks = [int(n) for n in args.chunk_blocks.split(",")]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    world_size = args.prefill_tp + args.decode_tp
    record = {"benchmark": "kv_transfer", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "environment": environment(), "config": {k: v if not isinstance(v, Path) else str(v)
                                                       for k, v in vars(args).items()},
              "kv_bytes": kv_bytes(args), "results": {}, "skipped": None}
    gpus = torch.cuda.device_count() if args.device == "cuda" else world_size
    if gpus < world_size:
        record["skipped"] = f"needs {world_size} GPUs (one per rank), the machine has {gpus}"
    else:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            mp.start_processes(run_rank, nprocs=world_size, args=(world_size, free_port(), args, out.name),
                               start_method="spawn")
            for chunk, result in json.loads(Path(out.name).read_text()).items():
                median = statistics.median(result["seconds"])
                record["results"][chunk] = {**result, "median_ms": median * 1e3,
                                            "gb_per_s": record["kv_bytes"] / median / 1e9}
                print(f"{args.prefill_tp} -> {args.decode_tp} ranks, chunks of {chunk} blocks ({result['chunks']} "
                      f"messages per route): {median * 1e3:.2f} ms, {record['kv_bytes'] / median / 1e9:.1f} GB/s, "
                      f"verified {result['verified']}")
    if record["skipped"]:
        print("skipped:", record["skipped"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
