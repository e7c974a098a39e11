"""Programmatic dependent launch (PDL) for the Triton kernels, on Hopper and newer GPUs.

A kernel launched with PDL may be scheduled while the kernel before it is still draining its last
wave. Its programs first do whatever needs nothing from earlier kernels (the GEMV loads its first
weight tile), then block in `wait()` until every earlier kernel has finished and its writes are
visible, then call `launch_dependents()` so the next kernel may be scheduled in turn. Because each
kernel lets its successor in only after its own wait returns, at most one kernel is ever parked
behind a running one, and a kernel never reads or writes activation memory before its wait.

At batch 1 a decode step is ~350 launches of a few microseconds each; PDL hides the gap between
them (benchmarks/decode_latency.py records the step with and without it). `EDGEWISE_PDL=0` turns
it off, for comparison or to rule it out when debugging (benchmarks flip `ENABLED` instead).
"""

from __future__ import annotations

import functools
import os

import torch
import triton

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a triton without griddepcontrol: kernels are never launched with PDL there
    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def wait_then_release():
    """Wait for the kernels before this one, then let the next kernel be scheduled."""
    gdc_wait()
    gdc_launch_dependents()


ENABLED = os.environ.get("EDGEWISE_PDL", "1") != "0"


@functools.lru_cache(maxsize=8)
def _supported(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    if torch.cuda.get_device_capability(device)[0] < 9:
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


def enabled(tensor: torch.Tensor) -> bool:
    """True when kernels writing `tensor`'s device should be launched with PDL."""
    return ENABLED and _supported(tensor.device)


def launch_options(use_pdl: bool) -> dict[str, bool]:
    """Extra launch keywords: `kernel[grid](..., USE_PDL=use_pdl, **launch_options(use_pdl))`."""
    return {"launch_pdl": True} if use_pdl else {}
