"""Runs the model for one scheduled batch: builds the step's tensors, runs the forward, samples.

It owns the device state: the model's weights, the paged KV cache (block ids index its first
dimension), the per-request sampling generators, and on GPUs the captured decode graphs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..config import EngineConfig, ModelConfig
from ..kernels import get_kernels
from ..layers.attention import AttentionMetadata
from ..layers.linear import LinearBase, MergedColumnParallelLinear, QKVParallelLinear, built_compressed
from ..layers.sampler import Sampler, SamplerOutput, SamplingBatch, skip_draws
from ..loader import is_compressed_folder, load_weights
from ..models.registry import build_model
from ..parallel.pipeline import PipelineStage
from ..parallel.state import tp_size
from ..weights.packed import CompressedWeight, share_scratch
from .block_tables import BlockTables
from .cuda_graphs import DecodeGraphs
from .device_copy import to_device
from .host_threads import use_one_thread_for_gpu_engine
from .kernel_warmup import warm_up
from .sampling_batch import SamplingPlan, add_token_bitmask, build_sampling_batch
from .scheduler import ScheduledBatch
from .sequence import Sequence
from .step_inputs import StepInputs, attention_metadata, device_inputs, plan_step

log = logging.getLogger(__name__)
# The sampled rows' grammar bitmask for a step, made by the engine while the step's forward pass runs.
TokenMasks = Callable[[SamplingPlan], "torch.Tensor | None"]


@dataclass
class HeldSampler:
    """A step's sampler, not queued yet: the logits, the sampling batch built from the plan, and the plan
    (which says the rows whose mask it waits for)."""

    logits: torch.Tensor
    batch: SamplingBatch
    plan: SamplingPlan


@dataclass
class LaunchedStep:
    """A step queued on the device: `token_ids[i]` (on the device) belongs to batch row `sampled_rows[i]`.

    `host` is the sampler's output on its way to host memory, complete once `ready` has passed
    (None on CPU, where it already is). A pipeline stage before the last has no tokens; the
    driver of a pipeline gets them from the last stage (`receive`, waited for in `collect`).
    """

    seq_ids: list[int]  # per batch row
    sampled_rows: list[int]
    token_ids: torch.Tensor | None
    host: SamplerOutput | None
    ready: torch.cuda.Event | None = None
    receive: Callable[[], SamplerOutput] | None = None
    # Launched with its sampler held back (``launch(..., hold_sampler=True)``), until
    # ``ModelRunner.sample`` gives it the mask and queues it.
    held: HeldSampler | None = None

    def token_rows(self) -> dict[int, int]:
        """seq_id -> row of `token_ids`."""
        return {self.seq_ids[row]: index for index, row in enumerate(self.sampled_rows)}


class ModelRunner:
    pipeline_depth = 1  # batches in flight at once: a pipeline of P stages keeps P (see LLMEngine.step)
    holds_sampler = True  # launch(hold_sampler=True), then sample(): a sharded instance's driver cannot

    def __init__(self, config: EngineConfig, model_config: ModelConfig, *, progress: bool = True,
                 stage: PipelineStage | None = None) -> None:
        """``stage``: the layers this rank runs when the model is split into pipeline stages."""
        self.config, self.model_config = config, model_config
        self.stage = stage
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
        started = time.perf_counter()
        self.num_blocks = self._allocate_kv_cache()
        log.info("KV cache of %d blocks sized and allocated in %.1f s", self.num_blocks, time.perf_counter() - started)
        if self.device.type == "cuda":  # before any request can wait on a kernel compile
            warm_up(self)
        self.graphs = None
        if self.device.type == "cuda" and not config.enforce_eager:
            started = time.perf_counter()
            self.graphs = DecodeGraphs(self, max_batch_size=min(config.max_num_seqs, 512))
            log.info("captured %d decode graphs in %.1f s", len(self.graphs.graphs), time.perf_counter() - started)
        if self.device.type == "cuda":  # loaded: from here on the host only keeps the device busy
            use_one_thread_for_gpu_engine()

    # -- setup -------------------------------------------------------------------------------

    def _build_and_load(self, progress: bool) -> torch.nn.Module:
        started = time.perf_counter()
        # Kernel mode: the linear layers never hold a whole dense weight, whether they read an ECF checkpoint
        # or take random weights made and coded one tensor at a time (_fill_dummy_compressed).
        dummy_compressed = self.config.load_format == "dummy" and self.config.compressed_weights == "kernel"
        if dummy_compressed and self.dtype != torch.bfloat16:
            raise ValueError(f"load_format='dummy' with compressed_weights='kernel' makes ECF weights held coded, "
                             f"which are bfloat16, not {self.dtype}: pass dtype='bfloat16'")
        keep_compressed = dummy_compressed or (
            self.config.load_format != "dummy" and self.config.compressed_weights in ("auto", "kernel")
            and self.device.type == "cuda" and self.dtype == torch.bfloat16 and is_compressed_folder(Path(self.config.model)))
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device), built_compressed(keep_compressed):
                model = build_model(self.model_config, self.ops, self.stage)
        finally:
            torch.set_default_dtype(previous)
        if self.config.load_format == "dummy":
            _fill_dummy_weights(model)
            if dummy_compressed:
                _fill_dummy_compressed(model, self.dtype, self.device)
        else:
            load_weights(model, Path(self.config.model), dtype=self.dtype, device=self.device, progress=progress,
                         keep_compressed=keep_compressed)
        log.info("loaded %s in %.1f s", self.config.model, time.perf_counter() - started)
        return model.eval()

    def kv_block_bytes(self) -> int:
        """One block's keys and values on this rank: its stage's layers, its share of the KV heads."""
        layers = self.attention_layers()
        return 2 * len(layers) * self.block_size * layers[0].num_kv_heads * self.model_config.head_dim * self.dtype.itemsize

    def _allocate_kv_cache(self) -> int:
        num_blocks = self.config.num_kv_blocks or self._num_blocks_that_fit()
        cfg = self.model_config
        shape = (2, len(self.attention_layers()), num_blocks, self.block_size, self.attention_layers()[0].num_kv_heads,
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
        meta = attention_metadata([num_tokens], [num_tokens], torch.arange(blocks, dtype=torch.int32,
                                  device=self.device)[None, :], torch.arange(num_tokens, device=self.device), self.device)
        stage = self.model.stage
        intermediate = None
        if not stage.is_first:  # what the previous stage would send
            intermediate = (torch.zeros((num_tokens, cfg.hidden_size), dtype=self.dtype, device=self.device),) * 2
        hidden = self.model(ids, torch.arange(num_tokens, device=self.device), meta, intermediate)
        if stage.is_last:
            logits = self.model.compute_logits(hidden[-min(num_tokens, self.config.max_num_seqs):])
            logits.float().sort(dim=-1)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - before
        del scratch, hidden
        torch.cuda.empty_cache()
        return peak

    def attention_layers(self) -> list:
        return [layer.self_attn.attn for layer in self.model.stage_layers()]

    # -- one step ----------------------------------------------------------------------------

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[list[int | None], SamplerOutput | None]:
        """Run one step and wait for it: the sampled token per sequence (None where a prompt
        chunk ended before the sequence's end) and the sampler's output for the sampled rows."""
        return self.collect(self.launch(batch))

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, previous: LaunchedStep | None = None,
               masks: TokenMasks | None = None, *, hold_sampler: bool = False) -> LaunchedStep:
        """Queue one step on the device without waiting for it.

        A sequence whose last token is still pending (sampled by `previous`, not read back yet)
        gets it as input straight from `previous`'s device tensor. `masks`: see `run`.
        `hold_sampler`: queue the forward pass only; the sampler follows with `sample`, once the
        step's mask is made (the engine then makes it while doing the rest of its step's work).
        """
        return self.run(self.plan(batch, previous), previous, masks, hold_sampler=hold_sampler)

    def plan(self, batch: ScheduledBatch, previous: LaunchedStep | None) -> StepInputs:
        """The step's inputs as host values (what a sharded instance's driver sends to its ranks).
        Host work only: it reads nothing of `previous` but which rows its sequences had."""
        started = time.perf_counter()
        inputs = plan_step(batch.seqs, batch.num_new_tokens, self.block_tables.gather, self.block_size,
                           previous.token_rows() if previous is not None else {})
        sampled = [batch.seqs[row] for row in inputs.sampled_rows]
        inputs.sampling = SamplingPlan.of(sampled, self.seed_for) if sampled else None
        self.prepare_s += time.perf_counter() - started
        return inputs

    def seed_for(self, seq: Sequence) -> int | None:
        """A request without a seed samples from the global generator here; see DriverRunner."""
        return None

    @torch.inference_mode()
    def run(self, inputs: StepInputs, previous: LaunchedStep | None = None,
            masks: TokenMasks | None = None, *, hold_sampler: bool = False) -> LaunchedStep:
        """Run the model on one step's inputs and sample; every rank of an instance runs the same inputs.

        `masks(plan)`: the sampled rows' grammar bitmask (host int32, or None), called once the
        forward pass is queued and before the sampler: on a GPU the host computes the masks (which
        need the previous step's tokens) while the device runs this step's forward pass.
        """
        started = time.perf_counter()
        previous_tokens = previous.token_ids if previous is not None else None
        input_ids, positions, meta = device_inputs(inputs, previous_tokens, self.device)
        self.prepare_s += time.perf_counter() - started
        hidden = self.forward(input_ids, positions, meta)
        if hidden is None or inputs.sampling is None:  # a stage before the last, or no row ends its sequence
            return LaunchedStep(inputs.seq_ids, inputs.sampled_rows, None, None)
        index = to_device(inputs.last_token_indices(), torch.long, self.device)
        logits = self.model.compute_logits(hidden.index_select(0, index))
        # From the plan alone: the masks read the previous step back, but release nothing until it is sampled.
        sampling = build_sampling_batch(inputs.sampling, logits.shape[-1], self.device, self._generator)
        step = LaunchedStep(inputs.seq_ids, inputs.sampled_rows, None, None,
                            held=HeldSampler(logits, sampling, inputs.sampling))
        if not hold_sampler:
            self.sample(step, masks(inputs.sampling) if masks is not None else None)
        return step

    @torch.inference_mode()
    def sample(self, step: LaunchedStep, bitmask: torch.Tensor | None) -> None:
        """Queue the sampler of a step launched with ``hold_sampler`` (or just launched), with the
        sampled rows' grammar bitmask (host int32, or None): ``step`` then holds its tokens."""
        assert step.held is not None, "the step's sampler is already queued"
        held, step.held = step.held, None
        add_token_bitmask(held.batch, bitmask, self.device)
        result = self.sampler(held.logits, held.batch)
        self.after_sampling(result)
        # Start the copy back now: read later with a plain .tolist(), it would queue behind the
        # next step and wait for that one too.
        step.token_ids, step.host = result.token_ids, _to_host(result)
        if self.device.type == "cuda":
            step.ready = torch.cuda.Event()
            step.ready.record()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
                ) -> torch.Tensor | None:
        """The final hidden states of the step's tokens (None on a pipeline stage before the last)."""
        if self.graphs is not None and meta.is_decode_only and self.graphs.fits(input_ids.shape[0]):
            return self.graphs.run(input_ids, positions, meta)
        return self.model(input_ids, positions, meta)

    def after_sampling(self, result: SamplerOutput) -> None:
        """Hook for a pipeline's last stage: hand the tokens to the driver."""

    def collect(self, step: LaunchedStep) -> tuple[list[int | None], SamplerOutput | None]:
        """Wait for a launched step's tokens: one per sequence, None where none was sampled."""
        out: list[int | None] = [None] * len(step.seq_ids)
        if step.receive is not None:
            step.host = step.receive()
        if step.ready is not None:
            step.ready.synchronize()
        if step.host is not None:
            for row, token in zip(step.sampled_rows, step.host.token_ids.tolist()):
                out[row] = token
        return out, step.host

    def _generator(self, seq_id: int, seed: int, num_drawn: int, vocab_size: int) -> torch.Generator:
        generator = self.generators.get(seq_id)
        if generator is None:
            generator = self.generators[seq_id] = torch.Generator(self.device).manual_seed(seed)
            skip_draws(generator, num_drawn, vocab_size)  # tokens sampled elsewhere (a prefill instance)
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


def _source_rows(layer: LinearBase) -> list[int]:
    """This rank's rows of each checkpoint tensor a linear layer stacks (q, k, v; gate, up; or one)."""
    if isinstance(layer, QKVParallelLinear):
        return [layer.q_size, layer.kv_size, layer.kv_size]
    if isinstance(layer, MergedColumnParallelLinear):
        return [size // tp_size() for size in layer.output_sizes]
    return [layer.weight_shape[0]]


@torch.no_grad()
def code_dense(matrix: torch.Tensor) -> CompressedWeight:
    """One random source tensor coded where it was made (a name the tests watch)."""
    return CompressedWeight.from_dense(matrix)


def _fill_dummy_compressed(model: torch.nn.Module, dtype: torch.dtype, device: torch.device, seed: int = 1) -> None:
    """Random N(0, 0.02) weights for the linear layers built compressed, made and ECF-coded on ``device``
    one checkpoint-sized tensor at a time: no dense weight larger than one such tensor ever exists,
    so a model too large for the device in bf16 loads. Each tensor keeps its own table, as when read."""
    generator = torch.Generator(device).manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, LinearBase) and m.loading_compressed]
    for layer in layers:
        first, cols = 0, layer.weight_shape[1]
        for rows in _source_rows(layer):
            dense = torch.empty((rows, cols), dtype=dtype, device=device)
            step = max(1, (1 << 24) // cols)  # float32 draws in chunks: a fraction of the tensor's size more
            for start in range(0, rows, step):
                chunk = dense[start:start + step]
                chunk.copy_(0.02 * torch.randn(chunk.shape, generator=generator, device=device))
            layer.keep_coded(first, code_dense(dense))
            first += rows
            del dense
        layer.finish_loading()
    if device.type == "cuda":
        share_scratch(layer.compressed for layer in layers)  # batches decode into it
        torch.cuda.empty_cache()  # the coding's temporaries, before the KV cache is sized from what is free


def _to_host(result: SamplerOutput) -> SamplerOutput:
    """The sampler's tensors copied to (pinned) host memory without waiting for them."""
    values = (getattr(result, field.name) for field in fields(result))
    return SamplerOutput(*(None if value is None else value.to("cpu", non_blocking=True) for value in values))
