"""benchmarks/kv_transfer.py on the CPU (Gloo): a small prompt moves, whole and in chunks, and every value checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kv_transfer.py"


def test_a_small_prompt_moves_whole_and_in_chunks_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "kv.json"
    subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--prompt-tokens", "40", "--prefill-tp", "2",
                    "--decode-tp", "1", "--chunk-blocks", "0,1", "--warmup", "0", "--repeats", "2", "--out", str(out)],
                   check=True, timeout=120)
    record = json.loads(out.read_text())
    assert record["skipped"] is None and record["kv_bytes"] == 2 * 32 * 8 * 128 * 40 * 4
    whole, chunked = record["results"]["whole"], record["results"]["1"]
    assert whole["chunks"] == 1 and chunked["chunks"] == 3  # 40 tokens: 3 blocks of 16
    for result in (whole, chunked):
        assert result["verified"] and len(result["seconds"]) == 2 and result["gb_per_s"] > 0
