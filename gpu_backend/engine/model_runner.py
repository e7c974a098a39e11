"""Runs the model for one scheduled batch: builds the step's tensors, runs the forward, samples.

It owns the device state: the model's weights, the paged KV cache (block ids index its first
dimension), the per-request sampling generators, and on GPUs the captured decode graphs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..config import EngineConfig, ModelConfig
from ..kernels import get_kernels
from ..layers.attention import AttentionMetadata
from ..layers.sampler import Sampler, SamplerOutput
from ..loader import load_weights
from ..models.registry import build_model
from .block_tables import BlockTables
from .cuda_graphs import DecodeGraphs
from .device_copy import tensor_to_device, to_device
from .sampling_batch import build_sampling_batch
from .scheduler import ScheduledBatch
from .sequence import Sequence

log = logging.getLogger(__name__)


@dataclass
class LaunchedStep:
    """A step queued on the device: `token_ids[i]` (on the device) belongs to `seqs[sampled_rows[i]]`.

    `host` is the sampler's output on its way to host memory, complete once `ready` has passed
    (None on CPU, where it already is)."""

    seqs: list[Sequence]
    sampled_rows: list[int]
    token_ids: torch.Tensor | None
    host: SamplerOutput | None
    ready: torch.cuda.Event | None = None

    def token_rows(self) -> dict[int, int]:
        """seq_id -> row of `token_ids`."""
        return {self.seqs[row].seq_id: index for index, row in enumerate(self.sampled_rows)}


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, *, progress: bool = True) -> None:
        self.config, self.model_config = config, model_config
        self.device = config.torch_device
        self.dtype = config.torch_dtype(model_config)
        self.max_model_len = min(config.max_model_len or model_config.max_context_len, model_config.max_context_len)
        self.block_size = config.block_size
        self.max_blocks_per_seq = -(-self.max_model_len // self.block_size)
        self.ops = get_kernels(config.attention_backend if self.device.type == "cuda" else "torch")
        self.model = self._build_and_load(progress)
        self.sampler = Sampler(argmax=self.ops.argmax)
        self.generators: dict[int, torch.Generator] = {}
        self.prepare_s = 0.0  # host time spent building step inputs, for StepStats
        self.block_tables = BlockTables(self.max_blocks_per_seq)
        self.num_blocks = self._allocate_kv_cache()
        self.graphs = None
        if self.device.type == "cuda" and not config.enforce_eager:
            self.graphs = DecodeGraphs(self, max_batch_size=min(config.max_num_seqs, 512))

    # -- setup -------------------------------------------------------------------------------

    def _build_and_load(self, progress: bool) -> torch.nn.Module:
        started = time.perf_counter()
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = build_model(self.model_config, self.ops)
        finally:
            torch.set_default_dtype(previous)
        if self.config.load_format == "dummy":
            _fill_dummy_weights(model)
        else:
            load_weights(model, Path(self.config.model), dtype=self.dtype, device=self.device, progress=progress)
        log.info("loaded %s in %.1f s", self.config.model, time.perf_counter() - started)
        return model.eval()

    def kv_block_bytes(self) -> int:
        return self.block_size * self.model_config.kv_bytes_per_token(self.dtype)

    def _allocate_kv_cache(self) -> int:
        num_blocks = self.config.num_kv_blocks or self._num_blocks_that_fit()
        cfg = self.model_config
        shape = (2, cfg.num_hidden_layers, num_blocks, self.block_size, self.attention_layers()[0].num_kv_heads,
                 cfg.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for index, attn in enumerate(self.attention_layers()):
            attn.k_cache, attn.v_cache = self.kv_cache[0, index], self.kv_cache[1, index]
        return num_blocks

    def _num_blocks_that_fit(self) -> int:
        if self.device.type == "cpu":
            return max(1, int(self.config.kv_cache_memory_gb * 1e9) // self.kv_block_bytes())
        free, total = torch.cuda.mem_get_info(self.device)
        peak_activations = self._profile_peak_activation_bytes()
        budget = total * self.config.gpu_memory_utilization - (total - free) - peak_activations
        num_blocks = int(budget // self.kv_block_bytes())
        if num_blocks <= 0:
            raise MemoryError(f"no GPU memory left for the KV cache (gpu_memory_utilization "
                              f"{self.config.gpu_memory_utilization}); lower max_num_batched_tokens or use more GPUs")
        return num_blocks

    def _profile_peak_activation_bytes(self) -> int:
        """Run the largest step the scheduler may send (with a throwaway cache) and measure its peak."""
        num_tokens = min(self.config.max_num_batched_tokens, self.max_model_len)
        blocks = -(-num_tokens // self.block_size)
        cfg = self.model_config
        kv_heads = self.attention_layers()[0].num_kv_heads
        scratch = torch.zeros((2, blocks, self.block_size, kv_heads, cfg.head_dim), dtype=self.dtype, device=self.device)
        for attn in self.attention_layers():
            attn.k_cache, attn.v_cache = scratch[0], scratch[1]
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        ids = torch.zeros(num_tokens, dtype=torch.long, device=self.device)
        meta = self._metadata([num_tokens], [num_tokens], torch.arange(blocks, dtype=torch.int32)[None, :],
                              torch.arange(num_tokens, device=self.device))
        hidden = self.model(ids, torch.arange(num_tokens, device=self.device), meta)
        logits = self.model.compute_logits(hidden[-min(num_tokens, self.config.max_num_seqs):])
        logits.float().sort(dim=-1)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - before
        del scratch, hidden, logits
        torch.cuda.empty_cache()
        return peak

    def attention_layers(self) -> list:
        return [layer.self_attn.attn for layer in self.model.model.layers]

    # -- one step ----------------------------------------------------------------------------

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[list[int | None], SamplerOutput | None]:
        """Run one step and wait for it: the sampled token per sequence (None where a prompt
        chunk ended before the sequence's end) and the sampler's output for the sampled rows."""
        return self.collect(self.launch(batch))

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, previous: LaunchedStep | None = None) -> LaunchedStep:
        """Queue one step on the device without waiting for it.

        A sequence whose last token is still pending (sampled by `previous`, not read back yet)
        gets it as input straight from `previous`'s device tensor.
        """
        started = time.perf_counter()
        # one-token rows first: the attention kernels serve that prefix with the decode kernel
        order = sorted(range(len(batch.seqs)), key=lambda row: batch.num_new_tokens[row] != 1)
        seqs = [batch.seqs[row] for row in order]
        counts = [batch.num_new_tokens[row] for row in order]
        input_ids, positions, meta, sample_rows = self.prepare(seqs, counts, previous)
        self.prepare_s += time.perf_counter() - started
        if self.graphs is not None and meta.is_decode_only and self.graphs.fits(len(seqs)):
            hidden = self.graphs.run(input_ids, positions, meta)
        else:
            hidden = self.model(input_ids, positions, meta)
        if not sample_rows:
            return LaunchedStep(batch.seqs, [], None, None)
        # sample in the batch's own order, so the sampler's rows line up with batch.seqs
        sample_rows.sort(key=order.__getitem__)
        index = to_device(_last_token_indices(counts, sample_rows), torch.long, self.device)
        logits = self.model.compute_logits(hidden.index_select(0, index))
        sampled_rows = [order[row] for row in sample_rows]
        sampled_seqs = [batch.seqs[row] for row in sampled_rows]
        result = self.sampler(logits, build_sampling_batch(sampled_seqs, logits.shape[-1], self.device, self._generator))
        # Start the copy back now: read later with a plain .tolist(), it would queue behind the
        # next step and wait for that one too.
        host = _to_host(result)
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record()
        return LaunchedStep(batch.seqs, sampled_rows, result.token_ids, host, ready)

    def collect(self, step: LaunchedStep) -> tuple[list[int | None], SamplerOutput | None]:
        """Wait for a launched step's tokens: one per sequence, None where none was sampled."""
        out: list[int | None] = [None] * len(step.seqs)
        if step.ready is not None:
            step.ready.synchronize()
        if step.host is not None:
            for row, token in zip(step.sampled_rows, step.host.token_ids.tolist()):
                out[row] = token
        return out, step.host

    def prepare(self, seqs: Seq[Sequence], counts: Seq[int], previous: LaunchedStep | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """The step's device inputs for `counts[i]` new tokens of `seqs[i]`, and the rows to sample.

        A pending last token (`seq.has_pending_token`) is read from `previous.token_ids` on the device."""
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens, seq_lens, sample_rows = [], [], []
        pending_at, pending_from = [], []  # flat input index <- row of previous.token_ids
        previous_rows = previous.token_rows() if previous is not None else {}
        for row, (seq, count) in enumerate(zip(seqs, counts)):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + count
            if seq.has_pending_token and end == seq.num_tokens:
                if seq.seq_id not in previous_rows:
                    raise RuntimeError(f"{seq} has a pending token that the previous step did not sample")
                pending_at.append(len(input_ids) + count - 1)
                pending_from.append(previous_rows[seq.seq_id])
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(_slots(seq.block_table, start, end, self.block_size))
            query_lens.append(count)
            seq_lens.append(end)
            if end == seq.num_tokens:
                sample_rows.append(row)
        num_tokens, num_pending = len(input_ids), len(pending_at)
        longs = to_device(input_ids + positions + slots + pending_at + pending_from, torch.long, self.device)
        ids = longs[:num_tokens]
        if num_pending:
            assert previous is not None and previous.token_ids is not None
            if num_pending == num_tokens and pending_from == list(range(num_tokens)):
                ids = previous.token_ids[:num_tokens]  # steady decode: the last step's tokens, in order
            else:
                tail = longs[3 * num_tokens:]
                ids = ids.index_copy(0, tail[:num_pending], previous.token_ids.index_select(0, tail[num_pending:]))
        meta = self._metadata(query_lens, seq_lens, self.block_tables.gather(seqs), longs[2 * num_tokens:3 * num_tokens])
        return ids, longs[num_tokens:2 * num_tokens], meta, sample_rows

    def _metadata(self, query_lens: Seq[int], seq_lens: Seq[int], block_tables: torch.Tensor,
                  slot_mapping: torch.Tensor) -> AttentionMetadata:
        num_seqs = len(seq_lens)
        starts = [0]
        for n in query_lens:
            starts.append(starts[-1] + n)
        ints = to_device(starts + list(seq_lens), torch.int32, self.device)
        return AttentionMetadata(
            slot_mapping=slot_mapping,
            query_start_loc=ints[: num_seqs + 1],
            seq_lens=ints[num_seqs + 1:],
            block_tables=tensor_to_device(block_tables, self.device),
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            is_decode_only=max(query_lens) == 1,
            num_decodes=next((i for i, n in enumerate(query_lens) if n != 1), num_seqs),
        )

    def _generator(self, seq_id: int, seed: int) -> torch.Generator:
        generator = self.generators.get(seq_id)
        if generator is None:
            generator = self.generators[seq_id] = torch.Generator(self.device).manual_seed(seed)
        return generator

    def release(self, seq_id: int) -> None:
        """Forget a finished request's sampling state and block table row."""
        self.generators.pop(seq_id, None)
        self.block_tables.release(seq_id)


@torch.no_grad()
def _fill_dummy_weights(model: torch.nn.Module) -> None:
    """Small random values (norm weights near 1) so activations stay finite through every layer."""
    generator = torch.Generator(next(model.parameters()).device).manual_seed(0)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.uniform_(-0.02, 0.02, generator=generator)


def _to_host(result: SamplerOutput) -> SamplerOutput:
    """The sampler's tensors copied to (pinned) host memory without waiting for them."""
    values = (getattr(result, field.name) for field in fields(result))
    return SamplerOutput(*(None if value is None else value.to("cpu", non_blocking=True) for value in values))


def _last_token_indices(counts: Seq[int], rows: list[int]) -> list[int]:
    """Index (in the step's flat token list) of the last token of each of `rows`."""
    ends, total = [], 0
    for count in counts:
        total += count
        ends.append(total - 1)
    return [ends[row] for row in rows]


def _slots(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of positions start..end-1, one range per block rather than one step per token."""
    slots: list[int] = []
    position = start
    while position < end:
        block = position // block_size
        stop = min(end, (block + 1) * block_size)
        base = block_table[block] * block_size - block * block_size
        slots.extend(range(base + position, base + stop))
        position = stop
    return slots
