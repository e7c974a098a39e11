"""torch's intra-op threads in a process whose engine runs on a GPU.

There the host's work is bookkeeping on small tensors, and the grammar masks, which llguidance fills on
a thread pool of its own while the forward pass runs. torch's OpenMP threads have nothing worth splitting,
yet each small op wakes them and they spin, waiting for more, on the cores llguidance's threads need.
Measured on an H100's host (16 cores), batch 32 with every row under a JSON schema of any-text strings
(benchmarks/results/structured_decode_diag.json): 9.8 ms per step with torch's 16 threads, 7.7 ms with one.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def use_one_thread_for_gpu_engine() -> None:
    """One intra-op thread for torch, unless ``OMP_NUM_THREADS`` says otherwise (the user's choice stands)."""
    if "OMP_NUM_THREADS" in os.environ or torch.get_num_threads() == 1:
        return
    log.info("torch's intra-op threads: %d -> 1, as the engine runs on a GPU (set OMP_NUM_THREADS to choose)",
             torch.get_num_threads())
    torch.set_num_threads(1)
