"""The step loop: schedule a batch, run it, hand the tokens back to the scheduler, detokenize.

``LLMEngine`` is synchronous and single-threaded; ``LLM`` drives it to completion and
``AsyncLLM`` drives it from a background thread. Prefill and decode are the same ``step``:
the scheduler decides which tokens of which sequences run, the model runner runs them.
"""

from __future__ import annotations

import itertools
from collections import deque
import logging
import time
from dataclasses import dataclass, field

from ..config import EngineConfig, ModelConfig
from ..errors import EngineError, InvalidRequestError, PromptTooLongError
from ..layers.sampler import SamplerOutput
from ..tokenizer import IncrementalDetokenizer, Tokenizer
from .block_manager import BlockManager
from .model_runner import LaunchedStep, ModelRunner
from .outputs import CompletionOutput, Logprob, RequestOutput
from .sampling_params import SamplingParams
from .scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from .sequence import PENDING_TOKEN, Sequence
from .stats import StepStats

log = logging.getLogger(__name__)
_request_ids = itertools.count()


@dataclass
class _Request:
    seq: Sequence
    prompt: str | None
    detokenizer: IncrementalDetokenizer | None
    text: str = ""
    logprobs: list[Logprob] | None = None
    stop_reason: str | int | None = None
    stream: bool = True  # report every step; otherwise only the finished output
    prompt_token_ids: list[int] = field(default_factory=list)  # shared by every output, never mutated
    pending_tokens: list[int] = field(default_factory=list)


@dataclass
class _InFlight:
    batch: ScheduledBatch
    launched: LaunchedStep


class LLMEngine:
    def __init__(self, config: EngineConfig, *, progress: bool = True, runner: ModelRunner | None = None) -> None:
        """``runner``: one built elsewhere (a sharded worker's driver); by default this process runs the model."""
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
        self.requests: dict[str, _Request] = {}
        self.held: dict[str, Sequence] = {}  # finished prefill requests whose blocks wait for their KV to be sent
        self.stats = StepStats()
        self._in_flight: _InFlight | None = None  # the batch on the device whose tokens are not read yet
        self._pipeline: deque[_InFlight] = deque()  # with pipeline stages: oldest first

    # -- requests ------------------------------------------------------------------------------

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, *, stream: bool = True, hold_blocks: bool = False) -> str:
        """Validate and queue one request; raises InvalidRequestError / PromptTooLongError.

        ``stream=False``: ``step`` reports the request only when it finishes (offline batches
        skip building an output per token). ``hold_blocks``: a prefill worker's request keeps its
        KV blocks when it finishes, until ``release_blocks`` (its KV is still to be sent)."""
        request = self._new_request(prompt, params, request_id, stream)
        request.seq.holds_blocks = hold_blocks
        self.scheduler.add(request.seq)
        self.requests[request.seq.request_id] = request
        return request.seq.request_id

    def _new_request(self, prompt: str | list[int], params: SamplingParams | None, request_id: str | None,
                     stream: bool) -> _Request:
        params = params or SamplingParams()
        request_id = request_id if request_id is not None else str(next(_request_ids))
        if request_id in self.requests or request_id in self.held:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        text, token_ids = self._tokenize(prompt)
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len - len(token_ids)
        if len(token_ids) + 1 > self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(token_ids)} tokens; this model takes at most {self.max_model_len - 1} "
                f"prompt tokens (max_model_len {self.max_model_len}, including at least one new token)"
            )
        params = params.with_defaults(max_tokens=max_tokens, eos_token_ids=self._eos_token_ids())
        seq = Sequence(token_ids, params, request_id=request_id)
        detokenizer = None if self.tokenizer is None else IncrementalDetokenizer(
            self.tokenizer, token_ids, skip_special_tokens=params.skip_special_tokens,
            stop=params.stop, include_stop_str_in_output=params.include_stop_str_in_output,
        )
        return _Request(seq, text, detokenizer, logprobs=[] if params.logprobs is not None else None,
                        stream=stream, prompt_token_ids=token_ids)

    # -- a prompt prefilled by another worker ----------------------------------------------------

    def reserve(self, prompt: list[int], params: SamplingParams | None, request_id: str) -> list[int] | None:
        """Blocks for a prompt whose KV another worker computes: the ids of the blocks it must fill
        (those past this cache's prefix hit), or None while the blocks are not free."""
        request = self._new_request(prompt, params, request_id, stream=True)
        if not self.scheduler.reserve(request.seq):
            return None
        self.requests[request_id] = request
        seq = request.seq
        return seq.block_table[seq.num_computed_tokens // self.block_manager.block_size:]

    def admit(self, request_id: str, first_token: int) -> RequestOutput | None:
        """The reserved prompt's KV has landed and ``first_token`` was sampled with it (and sent to
        the client) by the prefill worker: decode from here. An output only if that token ended it."""
        request = self.requests[request_id]
        seq = request.seq
        request.pending_tokens.append(first_token)
        if request.detokenizer is not None:  # the first token's text went out with the prefill worker
            request.detokenizer = IncrementalDetokenizer(
                self.tokenizer, [*request.prompt_token_ids, first_token],
                skip_special_tokens=seq.sampling_params.skip_special_tokens, stop=seq.sampling_params.stop,
                include_stop_str_in_output=seq.sampling_params.include_stop_str_in_output)
        if self.scheduler.admit(seq, first_token) is None:
            return None
        self.requests.pop(request_id)
        self.runner.release(seq.seq_id)
        return self._output(request, True, "", [])

    def release_blocks(self, request_id: str) -> None:
        """Free a finished prefill request's blocks once its KV has been sent (or will not be)."""
        seq = self.held.pop(request_id, None)
        if seq is not None:
            self.block_manager.free(seq)

    def _tokenize(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("the prompt is empty; send at least one character")
            if self.tokenizer is None:
                raise InvalidRequestError("this engine was started without a tokenizer; send token ids")
            text, token_ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, token_ids = None, [int(t) for t in prompt]
        if not token_ids:
            raise InvalidRequestError("the prompt has no tokens; send at least one token id")
        vocab = self.model_config.vocab_size
        if not 0 <= min(token_ids) <= max(token_ids) < vocab:
            bad = next(t for t in token_ids if not 0 <= t < vocab)
            raise InvalidRequestError(f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})")
        return text, token_ids

    def _eos_token_ids(self) -> tuple[int, ...]:
        ids = set(self.model_config.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))

    def abort(self, request_id: str) -> RequestOutput | None:
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
        return self._output(request, finished=True, delta_text="", delta_tokens=[])

    def has_unfinished_requests(self) -> bool:
        """Requests to step for (a reserved one waits for its KV, not for a step)."""
        return len(self.requests) > len(self.scheduler.reserved)

    # -- the loop ------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Queue one batch on the device; return an output for every request that got a new
        token or finished in the batch before it.

        The step loop runs one batch ahead: batch k is scheduled and launched (its pending
        inputs are batch k-1's sampled tokens, read on the device) before batch k-1's tokens are
        read back, checked for stops and detokenized, so the device never waits for the host.
        A sequence that stops in batch k-1 also ran in batch k; that extra token is dropped.
        With ``async_scheduling=False`` each batch is read back before the step returns.
        A pipeline keeps one batch per stage in flight instead (``_pipeline_step``).
        """
        if self.runner.pipeline_depth > 1:
            return self._pipeline_step()
        started = time.perf_counter()
        batch = self.scheduler.schedule()
        scheduled = time.perf_counter()
        outputs: list[RequestOutput] = []
        in_flight, self._in_flight = self._in_flight, None
        if not batch.seqs and in_flight is None and self.scheduler.has_unfinished:
            raise EngineError("the scheduler found nothing to run while requests are waiting")
        if in_flight is not None and any(seq.has_pending_token and seq.sampling_params.has_penalties
                                         for seq in batch.seqs):
            # penalties count the sequence's tokens on the host: read the last batch back first
            outputs = self._finish(in_flight)
            in_flight = None
            batch = batch.without_finished()
        launched = None
        if batch.seqs:
            launched = self.runner.launch(batch, in_flight.launched if in_flight is not None else None)
        self.stats.launch_s += time.perf_counter() - scheduled
        if in_flight is not None:
            outputs = self._finish(in_flight)
        if launched is not None:
            sampled_rows = set(launched.sampled_rows)
            self.scheduler.update(batch, [PENDING_TOKEN if row in sampled_rows else None
                                          for row in range(len(batch.seqs))])
            self._in_flight = _InFlight(batch, launched)
            self._count(batch)
            if not self.config.async_scheduling:
                outputs += self._finish(self._in_flight)
                self._in_flight = None
        self.stats.schedule_s += scheduled - started
        self.stats.prepare_s = self.runner.prepare_s
        return outputs

    def _pipeline_step(self) -> list[RequestOutput]:
        """Keep ``pipeline_depth`` batches of different sequences in flight, one per stage.

        The running sequences are shared out between the batches (each takes at most its share),
        so every stage has work. The oldest batch is read back once the pipeline is full; a
        sequence waits out the batch that holds it (its token comes back from the last stage),
        while a prompt's next chunk may follow its previous one straight away: each stage runs
        batches in order.
        """
        outputs: list[RequestOutput] = []
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
        launched = self.runner.launch(batch, None)
        self.stats.launch_s += time.perf_counter() - scheduled
        sampled_rows = set(launched.sampled_rows)
        self.scheduler.update(batch, [PENDING_TOKEN if row in sampled_rows else None for row in range(len(batch.seqs))])
        self._pipeline.append(_InFlight(batch, launched))
        self._count(batch)
        self.stats.prepare_s = self.runner.prepare_s
        return outputs

    def _finish(self, in_flight: _InFlight) -> list[RequestOutput]:
        """Read a launched batch's tokens back, apply them and build the requests' outputs."""
        waiting = time.perf_counter()
        sampled, sampler_output = self.runner.collect(in_flight.launched)
        finishing = time.perf_counter()
        self.stats.wait_s += finishing - waiting
        resolved = self.scheduler.resolve(in_flight.batch, sampled)
        if sampler_output is not None and sampler_output.logprobs is not None:
            self._record_logprobs(in_flight.batch, sampled, sampler_output)
        outputs = []
        for seq in resolved:
            request = self.requests.get(seq.request_id)
            if request is None:
                continue
            output = self._advance(request, seq.is_finished)
            if output is not None:
                outputs.append(output)
        self.stats.postprocess_s += time.perf_counter() - finishing
        return outputs

    def _count(self, batch: ScheduledBatch) -> None:
        stats = self.stats
        stats.steps += 1
        stats.decode_only_steps += batch.is_decode_only
        stats.scheduled_tokens += batch.num_tokens

    def _advance(self, request: _Request, finished: bool) -> RequestOutput | None:
        seq = request.seq
        new_tokens = seq.token_ids[seq.num_prompt_tokens + len(request.pending_tokens):]
        request.pending_tokens.extend(new_tokens)
        detokenizer = request.detokenizer
        delta, stopped = detokenizer.step(new_tokens) if detokenizer is not None else ("", False)
        if stopped and not finished:
            self.scheduler.finish(seq, "stop")
            finished = True
        if stopped:
            request.stop_reason = detokenizer.stop_reason
        elif finished:
            delta += detokenizer.finish() if detokenizer is not None else ""
            if seq.finish_reason == "stop" and seq.num_completion_tokens:
                request.stop_reason = seq.token_ids[-1]
        request.text += delta
        if finished:
            self.requests.pop(seq.request_id, None)
            self.runner.release(seq.seq_id)
            if seq.holds_blocks and seq.finish_reason != "abort":
                self.held[seq.request_id] = seq
        elif not request.stream:
            return None
        return self._output(request, finished, delta, new_tokens)

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

    def _output(self, request: _Request, finished: bool, delta_text: str, delta_tokens: list[int]) -> RequestOutput:
        seq = request.seq
        completion = CompletionOutput(
            index=0, text=request.text, token_ids=list(request.pending_tokens),
            finish_reason=seq.finish_reason if finished else None,
            stop_reason=request.stop_reason if finished else None,
            logprobs=list(request.logprobs) if request.logprobs is not None else None,
        )
        return RequestOutput(seq.request_id, request.prompt, request.prompt_token_ids, [completion], finished,
                             delta_text, list(delta_tokens), seq.num_cached_tokens)
