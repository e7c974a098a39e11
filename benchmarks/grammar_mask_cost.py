"""Host cost of one step's grammar masks: 32 rows of structured_decode.py's schema, each at a fresh state.

Times llguidance filling the rows one after another and in parallel (its executor, by default and
at a few thread counts), with the 128,256-id tokenizer ``structured_decode.py`` builds. The engine's
mask time per step at batch 32 should come out near the parallel figure; a gap means the time goes
elsewhere.

    python benchmarks/grammar_mask_cost.py [--rows 32] [--steps 40] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import llguidance
import llguidance.torch as llg_torch
from llama_shapes import LLAMA_3_1_8B, environment
from structured_decode import build_tokenizer, throughput_schema

from gpu_backend.tokenizer import Tokenizer


def random_document(rng: random.Random, items: int) -> str:
    names = ("".join(rng.choice("abcdefXYZ0123 ,:{}[]") for _ in range(rng.randrange(12))) for _ in range(items))
    return '{"items":[' + ",".join('{"id":%d,"name":%s}' % (rng.randrange(1000), json.dumps(n)) for n in names)


def timed_fill(rows: int, steps: int, tokenizer: llguidance.LLTokenizer, grammar: str, texts: list[list[int]],
               executor: llguidance.LLExecutor | None, copies: bool = False) -> float:
    """Mean seconds per step to fill ``rows`` masks, each row a matcher walking its own document.
    ``copies``: the matchers are deep copies of one compiled matcher, as the engine makes them."""
    if copies:
        compiled = llguidance.LLMatcher(tokenizer, grammar)
        matchers = [compiled.deep_copy() for _ in range(rows)]
    else:
        matchers = [llguidance.LLMatcher(tokenizer, grammar) for _ in range(rows)]
    mask = llg_torch.allocate_token_bitmask(rows, tokenizer.vocab_size)
    total = 0.0
    for step in range(steps):
        started = time.perf_counter()
        if executor is None:
            for row, matcher in enumerate(matchers):
                llg_torch.fill_next_token_bitmask(matcher, mask, row)
        else:
            llg_torch.fill_next_token_bitmask_par(executor, [(m, row) for row, m in enumerate(matchers)], mask)
        total += time.perf_counter() - started
        for row, matcher in enumerate(matchers):
            if not matcher.consume_token(texts[row][step]):
                raise AssertionError(f"row {row}: the grammar refused its own document: {matcher.get_error()}")
    return total / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    print(f"os.cpu_count() {os.cpu_count()}, usable by this process {cpus}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        build_tokenizer(Path(tmp), LLAMA_3_1_8B)
        ours = Tokenizer.from_pretrained(tmp)
        tokenizer = llguidance.LLTokenizer(ours.backend.to_str(), n_vocab=LLAMA_3_1_8B["vocab_size"],
                                           eos_token=LLAMA_3_1_8B["eos_token_id"])
        grammar = llguidance.grammar_from("json_schema", json.dumps(throughput_schema(300)))
        rng = random.Random(0)
        results: dict[str, float] = {}
        variants: list[tuple[str, llguidance.LLExecutor | None]] = [("serial", None), ("executor default", llguidance.LLExecutor())]
        variants += [(f"executor {n} threads", llguidance.LLExecutor(n)) for n in sorted({2, cpus // 2, cpus} - {0})]
        variants += [("executor default, deep copies", llguidance.LLExecutor())]
        for name, executor in variants:
            texts = [ours.encode(random_document(rng, 40))[: args.steps] for _ in range(args.rows)]
            if min(len(t) for t in texts) < args.steps:
                raise AssertionError("a random document is shorter than --steps tokens")
            seconds = timed_fill(args.rows, args.steps, tokenizer, grammar, texts, executor, "copies" in name)
            results[name] = seconds * 1000
            print(f"{name:22} {seconds * 1000:7.3f} ms per step of {args.rows} rows "
                  f"({seconds * 1e6 / args.rows:6.1f} us/row)", flush=True)
    if args.out:
        record = {"benchmark": "grammar_mask_cost", **environment(), "cpus_usable": cpus,
                  "config": {"rows": args.rows, "steps": args.steps, "vocab_size": LLAMA_3_1_8B["vocab_size"],
                             "schema": "structured_decode.throughput_schema(300)"},
                  "ms_per_step": results}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
