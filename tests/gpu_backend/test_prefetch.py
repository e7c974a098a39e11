"""gpu_backend.prefetch: the byte ranges it reads ahead are exactly the wanted tensors' bytes."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from gpu_backend.prefetch import _wanted_ranges, prefetching


def test_ranges_cover_exactly_the_wanted_tensors(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6, dtype=torch.float32), "b": torch.full((3,), 7, dtype=torch.int64),
               "c": torch.ones(2, 2, dtype=torch.bfloat16)}
    file = tmp_path / "t.safetensors"
    save_file(tensors, file)
    data = file.read_bytes()
    ranges = _wanted_ranges(file, lambda name: name != "b")
    read = b"".join(data[start:end] for start, end in ranges)
    expected = sorted((tensors[name].view(torch.uint8).numpy().tobytes() for name in ("a", "c")), key=data.find)
    assert read == b"".join(expected)
    assert _wanted_ranges(file, lambda name: False) == []
    assert _wanted_ranges(tmp_path / "missing.safetensors", lambda name: True) == []
    with prefetching([file], lambda name: True):  # reads in the background and leaves cleanly
        pass
