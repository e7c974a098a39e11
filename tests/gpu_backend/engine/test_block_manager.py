"""BlockManager: allocation, ref counts, chained-hash prefix hits, LRU reuse of cached blocks."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys

import pytest

from gpu_backend.engine.block_manager import BlockManager, hash_block_tokens
from gpu_backend.engine.sequence import Sequence

BS = 4


def computed(bm: BlockManager, tokens: list[int]) -> Sequence:
    """A sequence allocated and fully computed (as after its prefill), with its blocks registered."""
    seq = Sequence(tokens)
    bm.allocate(seq)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_computed_blocks(seq)
    return seq


def ref_counts(bm: BlockManager) -> list[int]:
    return [block.ref_count for block in bm.blocks]


def test_allocate_covers_all_tokens_and_free_returns_everything() -> None:
    bm = BlockManager(num_blocks=8, block_size=BS)
    seq = Sequence(range(10))
    assert bm.blocks_needed(10) == 3 and bm.blocks_needed(8) == 2 and bm.blocks_needed(0) == 0
    assert bm.can_allocate(seq)
    bm.allocate(seq)
    assert seq.block_table == [0, 1, 2]
    assert (seq.num_cached_tokens, seq.num_computed_tokens) == (0, 0)
    assert (bm.num_free_blocks, bm.num_used_blocks) == (5, 3)
    bm.free(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 8 and set(ref_counts(bm)) == {0}


def test_can_allocate_is_false_when_blocks_run_out() -> None:
    bm = BlockManager(num_blocks=3, block_size=BS)
    bm.allocate(Sequence(range(8)))
    assert not bm.can_allocate(Sequence(range(100, 105)))
    assert bm.can_allocate(Sequence(range(100, 104)))
    with pytest.raises(RuntimeError, match="can_allocate"):
        bm.allocate(Sequence(range(100, 105)))


def test_prefix_hit_shares_full_computed_blocks() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    first = computed(bm, list(range(10)))  # blocks [0..3] [4..7] [8 9]
    second = Sequence(list(range(8)) + [50, 51, 52])
    bm.allocate(second)
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] not in first.block_table
    assert (second.num_cached_tokens, second.num_computed_tokens) == (8, 8)
    assert [bm.blocks[b].ref_count for b in first.block_table] == [2, 2, 1]
    bm.free(first)
    bm.free(second)
    assert set(ref_counts(bm)) == {0} and bm.num_free_blocks == 16


def test_hit_leaves_at_least_the_last_token_to_compute() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    first = computed(bm, list(range(8)))
    same = Sequence(range(8))
    assert bm.num_prefix_hit_tokens(same) == 4  # both blocks cached, the last one is dropped
    bm.allocate(same)
    assert same.block_table[0] == first.block_table[0]
    assert same.block_table[1] != first.block_table[1]
    assert same.num_computed_tokens == 4
    longer = Sequence(range(9))
    bm.allocate(longer)
    assert longer.block_table[:2] == first.block_table and longer.num_computed_tokens == 8


def test_blocks_register_only_once_full_and_computed() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    first = Sequence(range(10))
    bm.allocate(first)
    bm.cache_computed_blocks(first)
    assert bm.num_cached_blocks == 0
    first.num_computed_tokens = 7  # chunk 1: block 0 full and computed, block 1 not yet
    bm.cache_computed_blocks(first)
    assert bm.num_cached_blocks == 1
    assert bm.num_prefix_hit_tokens(Sequence(range(10))) == 4
    first.num_computed_tokens = 10
    bm.cache_computed_blocks(first)
    assert bm.num_cached_blocks == 2  # the partial third block is never registered
    assert bm.num_prefix_hit_tokens(Sequence(range(10))) == 8


def test_blocks_register_as_decoding_fills_them() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    seq = computed(bm, [1, 2, 3, 4, 5, 6])
    assert bm.num_cached_blocks == 1
    for token in (7, 8):
        seq.append_token(token)
        bm.append_slots(seq, 1)
        seq.num_computed_tokens += 1
        bm.cache_computed_blocks(seq)
    assert bm.num_cached_blocks == 2
    assert bm.get_num_cached_prefix_tokens([1, 2, 3, 4, 5, 6, 7, 8, 9]) == 8


def test_same_block_content_after_a_different_prefix_does_not_hit() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    computed(bm, [1, 2, 3, 4, 5, 6, 7, 8, 0])
    other = Sequence([9, 9, 9, 9, 5, 6, 7, 8, 0])
    bm.allocate(other)
    assert other.num_cached_tokens == 0
    assert bm.get_num_cached_prefix_tokens([1, 2, 3, 4, 5, 6, 7, 8]) == 8  # uncapped, for routing
    assert bm.get_num_cached_prefix_tokens([1, 2, 3, 4, 5, 6, 7, 9]) == 4
    assert bm.get_num_cached_prefix_tokens([9, 9, 9, 9, 5, 6, 7, 8]) == 0
    assert bm.get_num_cached_prefix_tokens([1, 2, 3]) == 0


def test_hash_is_chained_blake2b_and_stable_across_processes() -> None:
    first = hash_block_tokens(b"", [1, 2, 3, 4])
    assert first == hashlib.blake2b(struct.pack("<4q", 1, 2, 3, 4), digest_size=8).digest()
    assert hash_block_tokens(first, [5, 6, 7, 8]) != hash_block_tokens(b"", [5, 6, 7, 8])
    code = ("from gpu_backend.engine.block_manager import hash_block_tokens as h;"
            "print(h(h(b'', [1, 2, 3, 4]), [5, 6, 7, 8]).hex())")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == hash_block_tokens(first, [5, 6, 7, 8]).hex()


def test_cached_free_block_is_taken_back_on_a_hit() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS)
    first = computed(bm, list(range(9)))
    cached = first.block_table[:2]
    bm.free(first)
    assert bm.num_free_blocks == 4 and bm.num_cached_blocks == 2
    again = Sequence(range(9))
    assert bm.can_allocate(again)
    bm.allocate(again)
    assert again.block_table[:2] == cached and again.num_cached_tokens == 8
    assert [bm.blocks[b].ref_count for b in again.block_table] == [1, 1, 1]
    assert bm.num_free_blocks == 1


def test_can_allocate_counts_free_hit_blocks_as_taken() -> None:
    bm = BlockManager(num_blocks=3, block_size=BS)
    first = computed(bm, list(range(9)))
    bm.free(first)
    # 3 free blocks, two of them are hits: 2 hits + 1 new fits, 2 hits + 2 new does not.
    assert bm.can_allocate(Sequence(list(range(8)) + [1, 2, 3, 4]))
    assert not bm.can_allocate(Sequence(list(range(8)) + [1, 2, 3, 4, 5]))


def test_eviction_uses_uncached_blocks_first_then_least_recently_freed_tail_first() -> None:
    bm = BlockManager(num_blocks=6, block_size=BS)
    old = computed(bm, [1, 1, 1, 1, 2, 2, 2, 2])  # blocks 0, 1 (cached)
    new = computed(bm, [3, 3, 3, 3, 4, 4])  # blocks 2 (cached), 3 (partial: never cached)
    bm.free(old)
    bm.free(new)
    # Free queue: uncached 3 and never-used 4, 5 first, then old (tail first), then new.
    takers = Sequence(range(100, 120))  # 5 blocks
    bm.allocate(takers)
    assert takers.block_table == [3, 4, 5, 1, 0]
    assert bm.get_num_cached_prefix_tokens([1, 1, 1, 1, 2, 2, 2, 2]) == 0
    assert bm.get_num_cached_prefix_tokens([3, 3, 3, 3]) == 4  # newest freed survives
    assert bm.blocks[0].hash is None and bm.blocks[1].hash is None and bm.num_cached_blocks == 1


def test_reused_cached_block_loses_its_hash() -> None:
    bm = BlockManager(num_blocks=2, block_size=BS)
    first = computed(bm, [1, 2, 3, 4, 5])
    bm.free(first)
    overwrite = Sequence([7, 7, 7, 7, 7, 7, 7, 7])
    bm.allocate(overwrite)
    assert bm.num_cached_blocks == 0
    assert bm.num_prefix_hit_tokens(Sequence([1, 2, 3, 4, 5])) == 0


def test_concurrent_identical_prefixes_keep_the_first_registration() -> None:
    bm = BlockManager(num_blocks=8, block_size=BS)
    a, b = Sequence(range(9)), Sequence(range(9))
    bm.allocate(a)
    bm.allocate(b)  # nothing cached yet: b computes its own copy
    assert set(a.block_table).isdisjoint(b.block_table)
    for seq in (a, b):
        seq.num_computed_tokens = 9
    bm.cache_computed_blocks(a)
    bm.cache_computed_blocks(b)
    assert bm.num_cached_blocks == 2
    assert [bm.blocks[i].hash is not None for i in a.block_table[:2]] == [True, True]
    assert [bm.blocks[i].hash is None for i in b.block_table[:2]] == [True, True]
    c = Sequence(range(9))
    bm.allocate(c)
    assert c.block_table[:2] == a.block_table[:2]
    for seq in (a, b, c):
        bm.free(seq)
    assert bm.num_free_blocks == 8 and set(ref_counts(bm)) == {0}


def test_append_slots_covers_the_slots_the_step_writes() -> None:
    bm = BlockManager(num_blocks=3, block_size=BS)
    seq = Sequence([1, 2, 3, 4])
    bm.allocate(seq)
    seq.num_computed_tokens = 4
    seq.append_token(5)  # position 4 needs a second block before it is computed
    assert len(seq.block_table) == 1 and bm.can_append(seq, 1)
    bm.append_slots(seq, 1)
    assert len(seq.block_table) == 2
    bm.append_slots(seq, 1)  # already covered: no-op
    assert len(seq.block_table) == 2
    assert bm.can_append(seq, 8) and not bm.can_append(seq, 9)  # 4 + 9 tokens need 4 blocks
    bm.append_slots(seq, 8)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 0
    with pytest.raises(RuntimeError, match="can_append"):
        bm.append_slots(seq, 9)


def test_prefix_caching_off_never_hits() -> None:
    bm = BlockManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    computed(bm, list(range(9)))
    again = Sequence(range(9))
    bm.allocate(again)
    assert again.num_cached_tokens == 0 and bm.num_cached_blocks == 0
    assert bm.get_num_cached_prefix_tokens(list(range(9))) == 0


def test_reset_prefix_cache_forgets_hashes_but_not_blocks() -> None:
    bm = BlockManager(num_blocks=8, block_size=BS)
    live = computed(bm, list(range(9)))
    bm.reset_prefix_cache()
    assert bm.num_cached_blocks == 0 and bm.num_used_blocks == 3
    assert bm.num_prefix_hit_tokens(Sequence(range(9))) == 0
    bm.free(live)
    assert bm.num_free_blocks == 8


def test_invalid_sizes() -> None:
    with pytest.raises(ValueError):
        BlockManager(num_blocks=0, block_size=BS)
