"""When the kernels ask for programmatic dependent launch."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_never_on_cpu_tensors() -> None:
    from gpu_backend.kernels import pdl

    assert not pdl.enabled(torch.zeros(1))
    assert pdl.launch_options(False) == {}
    assert pdl.launch_options(True) == {"launch_pdl": True}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_follows_the_switch_and_the_gpu_generation(monkeypatch) -> None:
    from gpu_backend.kernels import pdl

    x = torch.zeros(1, device="cuda")
    monkeypatch.setattr(pdl, "ENABLED", False)
    assert not pdl.enabled(x)
    monkeypatch.setattr(pdl, "ENABLED", True)
    assert pdl.enabled(x) == (torch.cuda.get_device_capability()[0] >= 9)  # Hopper on: the triton there has it
