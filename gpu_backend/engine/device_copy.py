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
    """A host tensor's copy on `device`. A pageable one is staged, so it may be changed as soon as this
    returns; a pinned one is copied straight from, so its owner lets it be (the caching host allocator
    reuses its block only once the copy has run)."""
    if device.type == "cpu":
        return tensor.clone()
    if tensor.is_pinned():
        return tensor.to(device, non_blocking=True)
    return tensor.pin_memory().to(device, non_blocking=True)
