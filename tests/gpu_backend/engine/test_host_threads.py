"""A GPU engine's process gives torch one intra-op thread, unless OMP_NUM_THREADS chose a number."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from gpu_backend.engine.host_threads import use_one_thread_for_gpu_engine


@pytest.fixture
def restored_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_one_thread_unless_the_user_chose(restored_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    use_one_thread_for_gpu_engine()
    assert torch.get_num_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    use_one_thread_for_gpu_engine()
    assert torch.get_num_threads() == 1
