"""A host copy of the running sequences' block tables, updated only by the blocks each step adds.

Rebuilding every table from Python lists costs milliseconds per step at a few hundred
sequences; a sequence gains a block only every ``block_size`` tokens, so the copy is written
incrementally and the step's rows are gathered with one indexing op. A table replaced by the
block manager (a new list object: preempted and re-admitted) is written again from the start.
"""

from __future__ import annotations

import torch

from .sequence import Sequence


class BlockTables:
    def __init__(self, max_blocks_per_seq: int, initial_rows: int = 64) -> None:
        self.table = torch.zeros((initial_rows, max_blocks_per_seq), dtype=torch.int32)
        self.free_rows = list(range(initial_rows - 1, -1, -1))
        self.rows: dict[int, tuple[int, list[int], int]] = {}  # seq_id -> (row, list it mirrors, entries written)

    def gather(self, seqs: list[Sequence]) -> torch.Tensor:
        """[len(seqs), widest table] int32 on the host; unused tail entries are stale, never read."""
        rows = [self._sync(seq) for seq in seqs]
        width = max(len(seq.block_table) for seq in seqs)
        return self.table[torch.tensor(rows), :width]

    def release(self, seq_id: int) -> None:
        entry = self.rows.pop(seq_id, None)
        if entry is not None:
            self.free_rows.append(entry[0])

    def _sync(self, seq: Sequence) -> int:
        blocks = seq.block_table
        entry = self.rows.get(seq.seq_id)
        if entry is None:
            row, written = self._take_row(), 0
        else:
            row, mirrored, written = entry
            if mirrored is not blocks:
                written = 0
        if len(blocks) > written:
            self.table[row, written:len(blocks)] = torch.tensor(blocks[written:], dtype=torch.int32)
        self.rows[seq.seq_id] = (row, blocks, len(blocks))
        return row

    def _take_row(self) -> int:
        if not self.free_rows:
            grown = self.table.shape[0]
            self.table = torch.cat([self.table, torch.zeros_like(self.table)])
            self.free_rows = list(range(2 * grown - 1, grown - 1, -1))
        return self.free_rows.pop()
