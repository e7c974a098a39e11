"""The step loop in token ids: schedule a batch, run it, hand the tokens back to the scheduler.

``EngineCore`` is synchronous and makes no text. Its one helper thread fills grammar masks while
a step's caller goes on (see ``step``); the next step waits for it before touching a grammar.
Each step returns an ``EngineOutput`` for every request that gained a token or finished, holding
only that step's ids (and logprobs), so emitting a token costs the same at any length.
``AsyncLLM`` drives it from a background thread, a sharded instance's driver from its loop, and
the offline ``LLMEngine`` adds text on top. Prefill and decode are the same ``step``: the
scheduler decides which tokens of which sequences run, the model runner runs them.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future
import logging
import time
from dataclasses import dataclass

import torch

from ..config import EngineConfig, ModelConfig
from ..errors import EngineError, InvalidRequestError, PromptTooLongError
from ..layers.sampler import SamplerOutput
from ..tokenizer import Tokenizer
from .block_manager import BlockManager
from .grammar import GrammarCompiler, GrammarMatcher
from .mask_filler import MaskFiller, Rows
from .model_runner import LaunchedStep, ModelRunner
from .outputs import EngineOutput, Logprob
from .sampling_batch import SamplingPlan
from .sampling_params import SamplingParams
from .scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from .sequence import PENDING_TOKEN, FinishReason, Sequence
from .stats import StepStats

log = logging.getLogger(__name__)
_request_ids = itertools.count()


@dataclass
class EngineRequest:
    """A request the core is running: its sequence and what has been reported of it."""

    seq: Sequence
    # Completion tokens already reported (on a decode instance the first one counts: the prefill
    # instance reported it). An output holds seq.token_ids from here on: only what is new.
    num_emitted: int = 0
    logprobs: list[Logprob] | None = None  # of the sampled tokens not reported yet, when asked for
    # Structured output: where the generated tokens are in the grammar (each token accepted once,
    # when it is read back). Preemption and recompute leave it alone: it follows the tokens.
    grammar: GrammarMatcher | None = None


@dataclass
class _InFlight:
    batch: ScheduledBatch
    launched: LaunchedStep
    # Its sampler held back: the mask being filled on the mask thread meanwhile (None: no row needs one).
    mask: Future[torch.Tensor] | None = None


@dataclass
class _StepMasks:
    """What the runner calls once a step's forward pass is queued, before its sampler: read the
    batch before back (its tokens advance the grammars), then make the step's token bitmask. The
    batch before's outputs are built after the sampler is queued: they are not on the mask's path."""

    core: EngineCore
    batch: ScheduledBatch
    in_flight: _InFlight | None
    read: _ReadBack | None = None  # the batch before, once read back here

    def __call__(self, plan: SamplingPlan) -> torch.Tensor | None:
        if self.in_flight is not None and self.read is None:
            self.read = self.core._read_back(self.in_flight)
        return self.core._token_masks(self.batch, plan)


@dataclass
class _ReadBack:
    """A launched batch's tokens, read back and applied to its sequences and grammars."""

    resolved: list[Sequence]
    sampled: list[int | None]
    sampler_output: SamplerOutput | None


class EngineCore:
    def __init__(self, config: EngineConfig, *, progress: bool = True, runner: ModelRunner | None = None) -> None:
        """``runner``: one built elsewhere (a sharded instance's driver); by default this process runs the model."""
        self.config = config
        self.model_config = ModelConfig.from_pretrained(config.model)
        self.tokenizer = None if config.skip_tokenizer_init else Tokenizer.from_pretrained(config.model)
        self.runner = runner or ModelRunner(config, self.model_config, progress=progress)
        self.max_model_len = self.runner.max_model_len
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                max_model_len=self.max_model_len,
                schedule_pending=self.runner.pipeline_depth == 1,
            ),
            self.block_manager,
        )
        self.requests: dict[str, EngineRequest] = {}
        self.held: dict[str, Sequence] = {}  # finished prefill requests whose blocks wait for their KV to be sent
        self.stats = StepStats()
        self._in_flight: _InFlight | None = None  # the batch on the device whose tokens are not read yet
        self._pipeline: deque[_InFlight] = deque()  # with pipeline stages: oldest first
        self._grammars: GrammarCompiler | None = None  # made for the first structured request
        self._masks: MaskFiller | None = None  # with it

    # -- requests ------------------------------------------------------------------------------

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, *, hold_blocks: bool = False, num_resumed_tokens: int = 0) -> str:
        """Validate and queue one request; raises InvalidRequestError / PromptTooLongError.

        ``hold_blocks``: a prefill instance's request keeps its KV blocks when it finishes, until
        ``release_blocks`` (its KV is still to be sent). ``num_resumed_tokens``: the prompt ends with
        that many tokens the request generated before (submitted again after a lost instance): its
        grammar takes them in first."""
        request = self._new_request(prompt, params, request_id, num_resumed_tokens)
        request.seq.holds_blocks = hold_blocks
        self.scheduler.add(request.seq)
        self.requests[request.seq.request_id] = request
        return request.seq.request_id

    def _new_request(self, prompt: str | list[int], params: SamplingParams | None,
                     request_id: str | None, num_resumed_tokens: int = 0) -> EngineRequest:
        params = params or SamplingParams()
        request_id = request_id if request_id is not None else str(next(_request_ids))
        if request_id in self.requests or request_id in self.held:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        token_ids = self._tokenize(prompt)
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len - len(token_ids)
        if len(token_ids) + 1 > self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(token_ids)} tokens; this model takes at most {self.max_model_len - 1} "
                f"prompt tokens (max_model_len {self.max_model_len}, including at least one new token)"
            )
        params = params.with_defaults(max_tokens=max_tokens, eos_token_ids=self._eos_token_ids())
        self._check_vocabulary(params.logit_bias or (), "logit_bias")
        grammar = None
        if params.structured is not None:
            grammar = self._grammar_compiler().matcher(params)
            _resume(grammar, token_ids, num_resumed_tokens)
        seq = Sequence(token_ids, params, request_id=request_id)
        return EngineRequest(seq, logprobs=[] if params.logprobs is not None else None, grammar=grammar)

    def _grammar_compiler(self) -> GrammarCompiler:
        if self.tokenizer is None:
            raise InvalidRequestError("structured output needs the model's tokenizer; this engine was started "
                                      "without one (skip_tokenizer_init)")
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer, self.model_config.vocab_size, self._eos_token_ids())
            self._masks = MaskFiller(self._grammars, pinned=self.runner.device.type == "cuda")
        return self._grammars

    # -- a prompt prefilled by another instance ----------------------------------------------------

    def reserve(self, prompt: list[int], params: SamplingParams | None, request_id: str,
                num_resumed_tokens: int = 0) -> list[int] | None:
        """Blocks for a prompt whose KV another instance computes: the ids of the blocks it must fill
        (those past this cache's prefix hit), or None while the blocks are not free."""
        request = self._new_request(prompt, params, request_id, num_resumed_tokens)
        if not self.scheduler.reserve(request.seq):
            return None
        self.requests[request_id] = request
        seq = request.seq
        return seq.block_table[seq.num_computed_tokens // self.block_manager.block_size:]

    def admit(self, request_id: str, first_token: int) -> EngineOutput | None:
        """The reserved prompt's KV has landed and ``first_token`` was sampled with it (and reported)
        by the prefill instance: decode from here. An output only if that token ended it."""
        request = self.requests[request_id]
        seq = request.seq
        request.num_emitted = 1  # the service has the first token from the prefill instance
        if self.scheduler.admit(seq, first_token) is None:
            if request.grammar is not None:  # sampled under the same grammar there
                self._accept(request, first_token)
            if not seq.is_finished:
                return None
        self.requests.pop(request_id)
        self.runner.release(seq.seq_id)
        return self._output(request, (), finished=True)

    def release_blocks(self, request_id: str) -> None:
        """Free a finished prefill request's blocks once its KV has been sent (or will not be)."""
        seq = self.held.pop(request_id, None)
        if seq is not None:
            self.block_manager.free(seq)

    def _tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("the prompt is empty; send at least one character")
            if self.tokenizer is None:
                raise InvalidRequestError("this engine was started without a tokenizer; send token ids")
            token_ids = self.tokenizer.encode(prompt)
        else:
            token_ids = [int(t) for t in prompt]
        if not token_ids:
            raise InvalidRequestError("the prompt has no tokens; send at least one token id")
        self._check_vocabulary(token_ids, "the prompt")
        return token_ids

    def _check_vocabulary(self, token_ids: Collection[int], where: str) -> None:
        vocab = self.model_config.vocab_size
        if token_ids and not 0 <= min(token_ids) <= max(token_ids) < vocab:
            bad = next(t for t in token_ids if not 0 <= t < vocab)
            raise InvalidRequestError(f"token id {bad} in {where} is outside the model's vocabulary (0..{vocab - 1})")

    def _eos_token_ids(self) -> tuple[int, ...]:
        ids = set(self.model_config.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))

    def finish(self, request_id: str, reason: FinishReason) -> None:
        """End a running request now (its text found a stop string); its blocks are freed, or kept
        for a hand-off like any finished prefill request's."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        self.scheduler.finish(request.seq, reason)
        self.runner.release(request.seq.seq_id)
        if request.seq.holds_blocks:
            self.held[request_id] = request.seq

    def abort(self, request_id: str) -> EngineOutput | None:
        """Stop a request wherever it is; its KV blocks are free when this returns."""
        request = self.requests.pop(request_id, None)
        if request is None:
            self.release_blocks(request_id)  # a prefill request that finished while its KV was on its way
            return None
        if self.scheduler.abort(request.seq) is None and request.seq.holds_blocks:
            # it ended by length in a step still on the device, keeping its blocks for a hand-off
            self.block_manager.free(request.seq)
        self.runner.release(request.seq.seq_id)
        request.seq.finish_reason = "abort"
        return self._output(request, (), finished=True)

    def has_unfinished_requests(self) -> bool:
        """Requests to step for (a reserved one waits for its KV, not for a step)."""
        return len(self.requests) > len(self.scheduler.reserved)

    # -- the loop ------------------------------------------------------------------------------

    def step(self) -> list[EngineOutput]:
        """Queue one batch on the device; return an output for every request that got a new
        token or finished in the batch before it.

        The step loop runs one batch ahead: batch k is scheduled and launched (its pending
        inputs are batch k-1's sampled tokens, read on the device) before batch k-1's tokens are
        read back and checked for stops, so the device never waits for the host.
        A sequence that stops in batch k-1 also ran in batch k; that extra token is dropped.
        With ``async_scheduling=False`` each batch is read back before the step returns.
        A pipeline keeps one batch per stage in flight instead (``_pipeline_step``).

        A batch with rows under a grammar needs batch k-1's tokens for its mask. In one process its
        sampler is held back and the mask filled on the mask thread while the host goes on (the
        order: docs/engine.md, "How the mask flows"); a sharded instance's driver, which sends the
        mask to its ranks, makes it inside the launch instead (``_StepMasks``).
        """
        if self.runner.pipeline_depth > 1:
            return self._pipeline_step()
        started = time.perf_counter()
        batch = self.scheduler.schedule()
        scheduled = time.perf_counter()
        outputs: list[EngineOutput] = []
        in_flight, self._in_flight = self._in_flight, None
        if not batch.seqs and in_flight is None and self.scheduler.has_unfinished:
            raise EngineError("the scheduler found nothing to run while requests are waiting")
        # penalties count the sequence's tokens on the host: then the last batch is read back first
        read_first = in_flight is not None and any(seq.has_pending_token and seq.sampling_params.has_penalties
                                                    for seq in batch.seqs)
        grammar = self._has_grammar(batch)
        hold = grammar and self.runner.holds_sampler and self.config.async_scheduling
        # with a held sampler, plan the step while the mask thread may still fill the batch before's mask
        planned = (self.runner.plan(batch, in_flight.launched if in_flight is not None else None)
                   if hold and batch.seqs and not read_first else None)
        if in_flight is not None and in_flight.launched.held is not None:
            self._sample_held(in_flight)  # its tokens are this step's pending inputs
        if read_first:
            outputs, in_flight = self._finish(in_flight), None  # type: ignore[arg-type]
            batch = batch.without_finished()
        launched = None
        masks = _StepMasks(self, batch, in_flight) if grammar and not hold else None
        previous = in_flight.launched if in_flight is not None else None
        if planned is not None:
            launched = self.runner.run(planned, previous, hold_sampler=True)
        elif batch.seqs:
            launched = self.runner.launch(batch, previous, **({"masks": masks} if masks is not None else {}),
                                          **({"hold_sampler": True} if hold else {}))
        self.stats.launch_s += time.perf_counter() - scheduled
        mask = None
        if hold and launched is not None:
            read = self._read_back(in_flight) if in_flight is not None else None
            if launched.held is not None:  # it samples a row (a prompt chunk that does not end samples none)
                mask = self._start_token_masks(batch, launched.held.plan)  # filled while the host goes on
            if read is not None:
                assert in_flight is not None
                outputs = self._outputs(in_flight, read)
        elif masks is not None and masks.read is not None:
            assert in_flight is not None
            outputs = self._outputs(in_flight, masks.read)  # read back while this step's forward pass ran
        elif in_flight is not None:
            outputs = self._finish(in_flight)
        if launched is not None:
            sampled_rows = set(launched.sampled_rows)
            self.scheduler.update(batch, [PENDING_TOKEN if row in sampled_rows else None
                                          for row in range(len(batch.seqs))])
            self._in_flight = _InFlight(batch, launched, mask)
            self._count(batch)
            if not self.config.async_scheduling:
                outputs += self._finish(self._in_flight)
                self._in_flight = None
        self.stats.schedule_s += scheduled - started
        self.stats.prepare_s = self.runner.prepare_s
        return outputs

    def _pipeline_step(self) -> list[EngineOutput]:
        """Keep ``pipeline_depth`` batches of different sequences in flight, one per stage.

        The running sequences are shared out between the batches (each takes at most its share),
        so every stage has work. The oldest batch is read back once the pipeline is full; a
        sequence waits out the batch that holds it (its token comes back from the last stage),
        while a prompt's next chunk may follow its previous one straight away: each stage runs
        batches in order.
        """
        outputs: list[EngineOutput] = []
        depth = self.runner.pipeline_depth
        if len(self._pipeline) >= depth:
            outputs = self._finish(self._pipeline.popleft())
        started = time.perf_counter()
        share = -(-(self.scheduler.num_running + self.scheduler.num_waiting) // depth)
        batch = self.scheduler.schedule(max_seqs=max(1, share))
        scheduled = time.perf_counter()
        self.stats.schedule_s += scheduled - started
        if not batch.seqs:
            if self._pipeline:
                return outputs + self._finish(self._pipeline.popleft())
            if self.scheduler.has_unfinished:
                raise EngineError("the scheduler found nothing to run while requests are waiting")
            return outputs
        masks = {"masks": _StepMasks(self, batch, None)} if self._has_grammar(batch) else {}
        launched = self.runner.launch(batch, None, **masks)
        self.stats.launch_s += time.perf_counter() - scheduled
        sampled_rows = set(launched.sampled_rows)
        self.scheduler.update(batch, [PENDING_TOKEN if row in sampled_rows else None for row in range(len(batch.seqs))])
        self._pipeline.append(_InFlight(batch, launched))
        self._count(batch)
        self.stats.prepare_s = self.runner.prepare_s
        return outputs

    def _finish(self, in_flight: _InFlight) -> list[EngineOutput]:
        """Read a launched batch's tokens back, apply them and build the requests' outputs."""
        return self._outputs(in_flight, self._read_back(in_flight))

    def _read_back(self, in_flight: _InFlight) -> _ReadBack:
        """Wait for a launched batch's tokens, resolve its sequences (stops) and advance their grammars."""
        waiting = time.perf_counter()
        sampled, sampler_output = self.runner.collect(in_flight.launched)
        finishing = time.perf_counter()
        self.stats.wait_s += finishing - waiting
        resolved = self.scheduler.resolve(in_flight.batch, sampled)
        for seq in resolved:
            request = self.requests.get(seq.request_id)
            if request is not None and request.grammar is not None and not seq.is_finished:
                self._accept(request, seq.last_token_id)
        self.stats.postprocess_s += time.perf_counter() - finishing
        return _ReadBack(resolved, sampled, sampler_output)

    def _outputs(self, in_flight: _InFlight, read: _ReadBack) -> list[EngineOutput]:
        """The outputs of a batch read back: its logprobs recorded, its finished requests released."""
        started = time.perf_counter()
        if read.sampler_output is not None and read.sampler_output.logprobs is not None:
            self._record_logprobs(in_flight.batch, read.sampled, read.sampler_output)
        outputs = []
        for seq in read.resolved:
            request = self.requests.get(seq.request_id)
            if request is None:
                continue
            output = self._advance(request, seq.is_finished)
            if output is not None:
                outputs.append(output)
        self.stats.postprocess_s += time.perf_counter() - started
        return outputs

    # -- structured output ---------------------------------------------------------------------

    def _has_grammar(self, batch: ScheduledBatch) -> bool:
        return self._grammars is not None and any(seq.sampling_params.structured is not None for seq in batch.seqs)

    def _accept(self, request: EngineRequest, token_id: int) -> None:
        """Advance the request's grammar past a generated token (an end token never gets here: it
        finished the sequence)."""
        assert request.grammar is not None
        if not request.grammar.accept(token_id):  # the mask allowed it: a bug, but only this request's
            log.error("request %s: the grammar rejected token %d: %s", request.seq.request_id, token_id,
                      request.grammar.error)
            self.scheduler.finish(request.seq, "stop")

    def _token_masks(self, batch: ScheduledBatch, plan: SamplingPlan) -> torch.Tensor | None:
        """The bitmask of ``plan``'s rows: each constrained row from its grammar, every other row all ones."""
        rows = self._constrained_rows(batch, plan)
        assert self._masks is not None
        return self._masks.fill(rows, len(plan.rows)) if rows else None

    def _start_token_masks(self, batch: ScheduledBatch, plan: SamplingPlan) -> Future[torch.Tensor] | None:
        """``_token_masks``, filled on the mask thread while the step goes on."""
        rows = self._constrained_rows(batch, plan)
        assert self._masks is not None
        return self._masks.start(rows, len(plan.rows)) if rows else None

    def _sample_held(self, in_flight: _InFlight) -> None:
        """Queue a held-back sampler, with its mask once the mask thread has made it."""
        bitmask = None
        if in_flight.mask is not None:
            assert self._masks is not None
            bitmask = self._masks.wait(in_flight.mask)
        in_flight.mask = None
        self.runner.sample(in_flight.launched, bitmask)

    def _constrained_rows(self, batch: ScheduledBatch, plan: SamplingPlan) -> Rows:
        seqs = {seq.seq_id: seq for seq in batch.seqs}
        rows = []
        for index in plan.constrained_rows:
            seq = seqs[plan.rows[index].seq_id]
            request = self.requests.get(seq.request_id)
            if request is not None and request.grammar is not None and not seq.is_finished:
                rows.append((request.grammar, index))
        return rows

    @property
    def grammar_mask_s(self) -> float:
        """Host time filling token bitmasks (on the mask thread, or in the step)."""
        return self._masks.fill_s if self._masks is not None else 0.0

    @property
    def grammar_wait_s(self) -> float:
        """Time the steps waited for the mask thread."""
        return self._masks.wait_s if self._masks is not None else 0.0

    def _count(self, batch: ScheduledBatch) -> None:
        stats = self.stats
        stats.steps += 1
        stats.decode_only_steps += batch.is_decode_only
        stats.scheduled_tokens += batch.num_tokens

    def _advance(self, request: EngineRequest, finished: bool) -> EngineOutput:
        seq = request.seq
        new_tokens = seq.token_ids[seq.num_prompt_tokens + request.num_emitted:]
        request.num_emitted += len(new_tokens)
        if finished:
            self.requests.pop(seq.request_id, None)
            self.runner.release(seq.seq_id)
            if seq.holds_blocks and seq.finish_reason != "abort":
                self.held[seq.request_id] = seq
        return self._output(request, new_tokens, finished)

    def _record_logprobs(self, batch: ScheduledBatch, sampled: list[int | None], result: SamplerOutput) -> None:
        row = 0
        for seq, token in zip(batch.seqs, sampled):
            if token is None:
                continue
            request = self.requests.get(seq.request_id)
            if request is not None and request.logprobs is not None and result.logprobs is not None:
                top = {}
                wanted = seq.sampling_params.logprobs or 0
                if wanted and result.top_token_ids is not None:
                    ids = result.top_token_ids[row, :wanted].tolist()
                    top = dict(zip(ids, result.top_logprobs[row, :wanted].tolist()))
                request.logprobs.append(Logprob(token, float(result.logprobs[row]), top))
            row += 1

    def _output(self, request: EngineRequest, new_tokens: list[int] | tuple[()], finished: bool) -> EngineOutput:
        """Only what is new since the last output: O(1) per token, however long the request."""
        seq = request.seq
        logprobs = None
        if request.logprobs is not None:
            logprobs, request.logprobs = tuple(request.logprobs), []
        return EngineOutput(seq.request_id, tuple(new_tokens), seq.num_prompt_tokens, request.num_emitted,
                            seq.num_cached_tokens, seq.finish_reason if finished else None, logprobs)


def _resume(grammar: GrammarMatcher, token_ids: list[int], num_resumed_tokens: int) -> None:
    """Take in the tokens a resubmitted request generated before (the end of its prompt now)."""
    if not 0 <= num_resumed_tokens < len(token_ids):
        raise InvalidRequestError(f"num_resumed_tokens must be in [0, {len(token_ids) - 1}] for this prompt, "
                                  f"got {num_resumed_tokens}")
    for token_id in token_ids[len(token_ids) - num_resumed_tokens:]:
        if not grammar.accept(token_id):
            raise InvalidRequestError(f"the resumed output does not match the request's grammar: {grammar.error}")
