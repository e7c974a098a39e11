"""Running a kernel test file's CPU variants under Triton's interpreter.

The interpreter must be switched on before triton is imported, so a test file's CPU variants
(selected with ``-k cpu``) run in a subprocess started with TRITON_INTERPRET=1; inside it,
``INTERPRETING`` is true.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
NEEDS_TRITON = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
NEEDS_CUDA = pytest.mark.skipif(INTERPRETING or not torch.cuda.is_available(), reason="needs CUDA")
# a kernel test's two variants: CUDA (marked gpu), and CPU inside the interpreter run only
DEVICES = [
    pytest.param("cuda", marks=[pytest.mark.gpu, NEEDS_CUDA]),
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRETING, reason="CPU runs only in the interpreter run")),
]
ROOT = Path(__file__).resolve().parents[2]


def _interpreter_runs_on_this_numpy() -> bool:
    # triton < 3.9's interpreter converts 1-element arrays with int(), which numpy >= 2.4 refuses
    import numpy
    import triton

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split(".")[:2])

    return version(triton.__version__) >= (3, 9) or version(numpy.__version__) < (2, 4)


def run_cpu_variants(test_file: str, timeout_s: float) -> None:
    """Run `test_file`'s tests whose id contains "cpu" in an interpreter subprocess; fail if any fails."""
    if not _interpreter_runs_on_this_numpy():
        pytest.skip("this triton's interpreter needs numpy < 2.4")
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "cpu", test_file]
    result = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
