"""The gated SiLU of Llama-family MLPs: silu(gate) * up over the fused gate_up projection."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import Kernels


class SiluAndMul(nn.Module):
    def __init__(self, ops: Kernels) -> None:
        super().__init__()
        self.ops = ops

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self.ops.silu_and_mul(gate_up)
