"""Host values to the device without waiting for it.

``torch.tensor(values, device="cuda")`` and a blocking ``.to("cuda")`` synchronize the stream:
the host would wait for the step already queued, which undoes the step loop's one-step lead.
These helpers stage through pinned memory and copy asynchronously instead (the caching host
allocator keeps the staging buffer alive until the copy has run).
"""

from __future__ import annotations

import torch


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return torch.tensor(values, dtype=dtype)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def tensor_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor's copy on `device` (the host tensor may be changed as soon as this returns)."""
    if device.type == "cpu":
        return tensor.clone()
    return tensor.pin_memory().to(device, non_blocking=True)
