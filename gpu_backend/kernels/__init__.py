"""The engine's kernels behind one tiny interface: `get_kernels("triton" | "torch" | "auto")`.

Both backends expose the same functions with the same signatures (docs/engine.md,
"Kernels"): `torch` is plain PyTorch (reference.py) and runs anywhere; `triton` is the fast GPU
path (triton_attention.py, triton_ops.py), imported only when asked for so that this package
imports on machines without triton; `auto` picks triton when CUDA and triton are both present.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from gpu_backend.errors import EngineError
from gpu_backend.kernels import reference

Tensor = torch.Tensor
BACKENDS = ("auto", "triton", "torch")


@dataclass(frozen=True)
class Kernels:
    """One backend's kernels; every field has the signature of the function of that name in reference.py.

    The three linears take a dense weight or an ECF ``CompressedWeight`` (weights/packed.py), kept coded
    in memory and decoded as it is read (docs/engine.md, "Kernels")."""

    name: str
    store_kv_cache: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], None]
    paged_attention: Callable[..., Tensor]  # (q, k_cache, v_cache, starts, seq_lens, tables, max_q, max_s, scale, num_decodes=0)
    decode_attention: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, float], Tensor]
    rms_norm: Callable[[Tensor, Tensor, float], Tensor]
    fused_add_rms_norm: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]]
    apply_rotary: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    rotary_store_kv: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
    silu_and_mul: Callable[[Tensor], Tensor]
    linear: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    rms_norm_linear: Callable[[Tensor, Tensor | None, Tensor, float, Tensor, Tensor | None], tuple[Tensor, Tensor]]
    silu_and_mul_linear: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    argmax: Callable[[Tensor], Tensor]


def triton_available() -> bool:
    """True when the triton package can be imported (it may still lack a GPU to run on)."""
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str) -> str:
    """The concrete backend `backend` names: `auto` becomes triton on CUDA machines with triton."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown kernel backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if torch.cuda.is_available() and triton_available() else "torch"
    return backend


def get_kernels(backend: str = "auto") -> Kernels:
    """The kernels of `backend` ("triton", "torch" or "auto")."""
    name = resolve_backend(backend)
    if name == "torch":
        return _collect(name, reference, reference, reference)
    if not triton_available():
        raise EngineError("kernel backend 'triton' needs the triton package: install it or use 'torch'")
    from gpu_backend.kernels import triton_attention, triton_linear, triton_ops

    return _collect(name, triton_attention, triton_ops, triton_linear)


def _collect(name: str, attention: ModuleType, ops: ModuleType, linear: ModuleType) -> Kernels:
    return Kernels(
        name=name,
        store_kv_cache=ops.store_kv_cache,
        paged_attention=attention.paged_attention,
        decode_attention=attention.decode_attention,
        rms_norm=ops.rms_norm,
        fused_add_rms_norm=ops.fused_add_rms_norm,
        apply_rotary=ops.apply_rotary,
        rotary_store_kv=ops.rotary_store_kv,
        silu_and_mul=ops.silu_and_mul,
        linear=linear.linear,
        rms_norm_linear=linear.rms_norm_linear,
        silu_and_mul_linear=linear.silu_and_mul_linear,
        argmax=ops.argmax,
    )


__all__ = ["BACKENDS", "Kernels", "get_kernels", "resolve_backend", "triton_available"]
