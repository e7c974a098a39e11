"""benchmarks/compressed_capacity.py --tiny runs on CPU: the bf16 attempts in child processes, the engine over
random ECF weights coded on the device, the decode measurements and the greedy sanity run (the H200 run is the
device's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_tiny_run_writes_its_record(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sdk"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compressed_capacity.py"), "--tiny", "--batches", "1,2",
         "--out", str(out)],
        cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads(out.read_text())
    bf16, ecf = record["bf16"], record["ecf"]
    assert bf16["weight_bytes"] > 0 and bf16["kv_bytes_per_token"] == 2 * 2 * 2 * 32 * 2
    for attempt in ("auto_sized", "usable_kv"):  # nothing runs out of memory on CPU
        assert bf16[attempt]["fits"] is True and bf16[attempt]["kv_tokens"] > 0, bf16[attempt]
    assert bf16["usable_kv"]["kv_tokens"] >= record["config"]["usable_kv_tokens"]
    assert ecf["greedy"]["ok"] is True and all(len(t) == 6 for t in ecf["greedy"]["tokens"])
    memory = ecf["memory_bytes"]
    assert memory["linear_dense"] == 0 and memory["linear_compressed"] > 0  # the linear layers hold codes only
    assert ecf["kv_tokens"] > 0 and ecf["usable_kv"] is True and ecf["ready_s"] > 0
    assert ecf["batch1"]["decode_tok_s"] > 0 and ecf["batch2"]["decode_tok_s"] > 0
    assert record["config"]["model"] == "tiny Llama" and "torch" in record
