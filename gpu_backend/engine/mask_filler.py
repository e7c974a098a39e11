"""A step's grammar bitmask, filled in the step or on the mask thread while the step goes on.

``EngineCore`` picks the rows (each constrained row's matcher and its row in the step's plan);
``MaskFiller`` makes the bitmask (in pinned memory on a GPU, so it is copied to the device from where
llguidance wrote it), fills it through the ``GrammarCompiler``, and counts the time spent: filling
(``fill_s``, on whichever thread) and waiting for the mask thread (``wait_s``).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .grammar import GrammarCompiler, GrammarMatcher, allocate_bitmask

Rows = list[tuple[GrammarMatcher, int]]
START_TIMEOUT_S = 1.0  # the mask thread takes a step's rows within microseconds; this only bounds the wait


class MaskFiller:
    def __init__(self, compiler: GrammarCompiler, pinned: bool) -> None:
        self.compiler = compiler
        self.pinned = pinned
        self.fill_s = 0.0  # host time filling bitmasks (on the mask thread, or in the step)
        self.wait_s = 0.0  # time a step waited for the mask thread
        self._thread: ThreadPoolExecutor | None = None  # made for the first mask filled while the step goes on

    def fill(self, rows: Rows, num_rows: int, begun: threading.Event | None = None) -> torch.Tensor:
        """The bitmask of a step's ``num_rows`` sampled rows: ``rows`` from their grammars, the others all ones."""
        if begun is not None:
            begun.set()  # from here the thread that started it may go on: the fill soon leaves the GIL
        started = time.perf_counter()
        bitmask = allocate_bitmask(num_rows, self.compiler.bitmask_vocab_size, pinned=self.pinned)
        self.compiler.fill_bitmask(rows, bitmask)
        self.fill_s += time.perf_counter() - started
        return bitmask

    def start(self, rows: Rows, num_rows: int) -> Future[torch.Tensor]:
        """``fill`` on the mask thread: the rows' matchers are left alone until ``wait`` has returned."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")
        begun = threading.Event()
        mask = self._thread.submit(self.fill, rows, num_rows, begun)
        # Wait (releasing the GIL) until the mask thread has begun: else it might only get the GIL, and
        # start, once this thread next blocks, which is the next step's wait for this very mask.
        begun.wait(START_TIMEOUT_S)
        return mask

    def wait(self, mask: Future[torch.Tensor]) -> torch.Tensor:
        waiting = time.perf_counter()
        bitmask = mask.result()
        self.wait_s += time.perf_counter() - waiting
        return bitmask
