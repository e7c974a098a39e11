"""BlockTables mirrors each sequence's block list: appended blocks, replaced lists, row reuse and growth."""

from __future__ import annotations

from gpu_backend.engine.block_tables import BlockTables
from gpu_backend.engine.sequence import Sequence


def make(blocks: list[int]) -> Sequence:
    seq = Sequence([1, 2, 3])
    seq.block_table = blocks
    return seq


def test_appended_blocks_and_replaced_tables_are_mirrored() -> None:
    tables = BlockTables(max_blocks_per_seq=8, initial_rows=2)
    a, b = make([5, 6]), make([9])
    assert tables.gather([a, b]).tolist() == [[5, 6], [9, 0]]
    a.block_table.append(7)  # append_slots extends the same list
    b.block_table = [3, 4, 1]  # preempted and re-admitted: a new list
    assert tables.gather([b, a]).tolist() == [[3, 4, 1], [5, 6, 7]]


def test_rows_are_reused_after_release_and_the_table_grows() -> None:
    tables = BlockTables(max_blocks_per_seq=4, initial_rows=1)
    seqs = [make([i, i + 1]) for i in range(5)]
    assert tables.gather(seqs).tolist() == [[i, i + 1] for i in range(5)]
    tables.release(seqs[0].seq_id)
    fresh = make([42])
    gathered = tables.gather([fresh, seqs[4]]).tolist()
    assert gathered[0][0] == 42 and gathered[1] == [4, 5]  # entries past a table's length are never read
    assert tables.table.shape[0] == 8
