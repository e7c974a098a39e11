"""benchmarks/compressed_decode.py --tiny runs on CPU: it writes an ECF folder from in-memory weights,
loads it both ways, measures, and finds the greedy tokens identical (the GPU run is the device's)."""

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
        [sys.executable, str(ROOT / "benchmarks" / "compressed_decode.py"), "--tiny", "--batches", "1,2",
         "--variants", "ecf-decode-at-load,ecf-kernel", "--out", str(out)],
        cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["greedy_tokens_identical"] is True
    assert 0.74 < record["ecf_folder"]["ratio"] < 0.8 and record["ecf_folder"]["escapes"] > 0
    for variant in ("ecf-decode-at-load", "ecf-kernel"):
        row = record["results"][variant]
        assert row["batch1"]["decode_tok_s"] > 0 and row["batch2"]["decode_tok_s"] > 0 and row["prefill_s"] > 0
