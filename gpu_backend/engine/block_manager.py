"""Owns the KV cache's block ids: ref counts, the free queue, and the prefix cache (hash -> block).

A full block whose KV is computed is registered under a chained hash of its token ids, so a
later sequence with the same prefix reuses it instead of recomputing. Freed registered blocks
stay reusable until their slot is needed for new content (least recently freed goes first).
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence as Seq

from .sequence import Sequence


def hash_block_tokens(prev_hash: bytes, token_ids: Seq[int]) -> bytes:
    """Chained block hash: equal only for equal content after an equal prefix; stable across processes."""
    digest = hashlib.blake2b(prev_hash, digest_size=8)
    digest.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return digest.digest()


class Block:
    __slots__ = ("block_id", "hash", "ref_count")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: bytes | None = None  # set iff the prefix cache maps this hash to this block

    def __repr__(self) -> str:
        return f"Block({self.block_id}, ref_count={self.ref_count}, hashed={self.hash is not None})"


class BlockManager:
    """Block ids ``0..num_blocks-1`` with ref counts; a block is free when its ref count is 0."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free queue, front = reused first. An OrderedDict so a cached free block that gets a
        # prefix hit leaves the middle of the queue in O(1).
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._hash_to_block: dict[bytes, int] = {}
        self._num_registered: dict[int, int] = {}  # seq_id -> leading blocks already offered to the cache

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._hash_to_block)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- admission ---------------------------------------------------------------------------

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._match_prefix(seq)
        num_free_hits = sum(1 for block_id in hits if self.blocks[block_id].ref_count == 0)
        num_new = self.blocks_needed(seq.num_tokens) - len(hits)
        return num_new <= len(self._free) - num_free_hits

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` blocks for all its current tokens, reusing cached full prefix blocks.

        Sets ``block_table`` and ``num_computed_tokens`` (= the hit); ``num_cached_tokens`` too,
        but only before any preemption, so usage reports the prompt's hit, not a recompute's.
        """
        if seq.block_table:
            raise RuntimeError(f"{seq} already has blocks")
        if not self.can_allocate(seq):
            raise RuntimeError(f"not enough free KV blocks for {seq}; call can_allocate first")
        hits = self._match_prefix(seq)
        for block_id in hits:
            self._take(block_id)
        num_new = self.blocks_needed(seq.num_tokens) - len(hits)
        seq.block_table = hits + [self._take_free() for _ in range(num_new)]
        seq.num_computed_tokens = len(hits) * self.block_size
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = seq.num_computed_tokens
        self._num_registered[seq.seq_id] = len(hits)

    def num_prefix_hit_tokens(self, seq: Sequence) -> int:
        """Tokens ``allocate(seq)`` would take from the prefix cache right now."""
        return len(self._match_prefix(seq)) * self.block_size

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the cached full-block prefix, leaving at least the last token to compute."""
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        for index in range((seq.num_tokens - 1) // self.block_size):
            block_id = self._hash_to_block.get(self._block_hash(seq, index))
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    # -- growth ------------------------------------------------------------------------------

    def can_append(self, seq: Sequence, num_new_tokens: int = 1) -> bool:
        return self._num_missing(seq, num_new_tokens) <= len(self._free)

    def append_slots(self, seq: Sequence, num_new_tokens: int = 1) -> None:
        """Make ``block_table`` cover KV slots ``0 .. num_computed_tokens + num_new_tokens - 1``,
        the slots the coming step writes; a no-op when they are covered already."""
        missing = self._num_missing(seq, num_new_tokens)
        if missing > len(self._free):
            raise RuntimeError(f"not enough free KV blocks to extend {seq}; call can_append first")
        seq.block_table.extend(self._take_free() for _ in range(missing))

    def _num_missing(self, seq: Sequence, num_new_tokens: int) -> int:
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens)
        return max(0, needed - len(seq.block_table))

    # -- prefix cache ------------------------------------------------------------------------

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Register the hashes of ``seq``'s blocks that are full and computed (incrementally).

        If another block already holds the same hash (two sequences computed the same prefix
        at once), the existing mapping wins and this copy stays private to ``seq``.
        """
        if not self.enable_prefix_caching:
            return
        start = self._num_registered.get(seq.seq_id, 0)
        end = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        for index in range(start, end):
            block_hash = self._block_hash(seq, index)
            block = self.blocks[seq.block_table[index]]
            if block_hash not in self._hash_to_block and block.hash is None:
                self._hash_to_block[block_hash] = block.block_id
                block.hash = block_hash
        self._num_registered[seq.seq_id] = max(start, end)

    def get_num_cached_prefix_tokens(self, token_ids: Seq[int]) -> int:
        """Leading tokens of ``token_ids`` held by cached full blocks (no last-token cap): for routing."""
        if not self.enable_prefix_caching:
            return 0
        block_hash, size = b"", self.block_size
        for index in range(len(token_ids) // size):
            block_hash = hash_block_tokens(block_hash, token_ids[index * size:(index + 1) * size])
            if block_hash not in self._hash_to_block:
                return index * size
        return len(token_ids) // size * size

    def reset_prefix_cache(self) -> None:
        """Forget every hash; blocks in use keep their content but can no longer be shared."""
        for block_id in self._hash_to_block.values():
            self.blocks[block_id].hash = None
        self._hash_to_block.clear()

    def _block_hash(self, seq: Sequence, index: int) -> bytes:
        hashes, size = seq.block_hashes, self.block_size
        while len(hashes) <= index:
            start = len(hashes) * size
            prev = hashes[-1] if hashes else b""
            hashes.append(hash_block_tokens(prev, seq.token_ids[start:start + size]))
        return hashes[index]

    # -- release -----------------------------------------------------------------------------

    def free(self, seq: Sequence) -> None:
        """Drop ``seq``'s references; leaves its token counters alone (the caller decides).

        Blocks go back last-first so that, within one sequence, the tail is evicted before the
        head: a chain is only reachable through its head, so a tail without its head is dead.
        """
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._release(block)
        seq.block_table = []
        self._num_registered.pop(seq.seq_id, None)

    def _release(self, block: Block) -> None:
        self._free[block.block_id] = None
        if block.hash is None:
            # Content nobody can reuse goes first, so cached blocks survive longer.
            self._free.move_to_end(block.block_id, last=False)

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]  # prefix hit on a cached free block
        block.ref_count += 1

    def _take_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict: the slot gets new content
            del self._hash_to_block[block.hash]
            block.hash = None
        block.ref_count = 1
        return block_id
