"""get_kernels: backend names, the `auto` choice, and that both backends expose identical signatures."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect

import pytest
import torch

from gpu_backend import kernels
from gpu_backend.errors import EngineError
from gpu_backend.kernels import reference

KERNEL_NAMES = [f.name for f in dataclasses.fields(kernels.Kernels) if f.name != "name"]


def test_torch_backend_is_the_reference() -> None:
    torch_kernels = kernels.get_kernels("torch")
    assert torch_kernels.name == "torch"
    for name in KERNEL_NAMES:
        assert getattr(torch_kernels, name) is getattr(reference, name)


def test_auto_picks_triton_only_with_cuda_and_triton(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernels.resolve_backend("auto") == "torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    assert kernels.resolve_backend("auto") == "torch"
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    assert kernels.resolve_backend("auto") == "triton"


def test_unknown_backend_and_missing_triton_raise(monkeypatch) -> None:
    with pytest.raises(EngineError, match="unknown kernel backend 'cuda'"):
        kernels.get_kernels("cuda")
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    with pytest.raises(EngineError, match="needs the triton package"):
        kernels.get_kernels("triton")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_have_the_reference_signatures() -> None:
    triton_kernels = kernels.get_kernels("triton")
    assert triton_kernels.name == "triton"
    for name in KERNEL_NAMES:
        assert inspect.signature(getattr(triton_kernels, name)) == inspect.signature(
            getattr(reference, name)
        ), name
