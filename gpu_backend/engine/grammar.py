"""Grammar-constrained decoding: a request's ``StructuredOutput`` compiled for the model's tokenizer,
and one matcher per sequence that says which tokens may come next, as a row of a token bitmask.

llguidance does the work (a Rust engine: JSON schemas, Lark grammars, the token trie). Its
``LLTokenizer`` is built from our own ``tokenizers.Tokenizer`` (the JSON it serializes to), so
transformers is not needed. A bitmask row is ``ceil(vocab / 32)`` int32 words; bit ``t % 32`` of
word ``t // 32`` set means token ``t`` is allowed.

How a constrained request ends: its end tokens are the ones the scheduler stops on (eos unless
``ignore_eos``, and ``stop_token_ids``). They are allowed exactly where the grammar may end, and
are never fed to the matcher (the sequence is over). Once the grammar is complete nothing else
is allowed, so the request finishes with "stop"; ``max_tokens`` still cuts it off with "length".
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import llguidance
import llguidance.torch
import numpy as np
import torch

from ..config import available_cpus
from ..errors import InvalidRequestError
from ..tokenizer import Tokenizer
from .sampling_params import SamplingParams
from .structured_output import StructuredOutput

log = logging.getLogger(__name__)

MAX_CACHED_GRAMMARS = 256
# Compact JSON: a flexible-whitespace grammar lets a weak model pad with spaces until max_tokens.
# A schema's own "x-guidance" options override this.
JSON_DEFAULTS = {"whitespace_flexible": False}
_ANY_OBJECT_SCHEMA = '{"type": "object"}'


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_bitmask(num_rows: int, vocab_size: int, pinned: bool = False) -> torch.Tensor:
    """A host bitmask with every token allowed (-1 is all 32 bits set).

    ``pinned``: in page-locked memory (torch's caching host allocator), so llguidance writes where the
    copy to the GPU reads from: staging a pageable mask costs a copy through torch's thread pool, 0.6 ms
    a step at batch 32 on an H100's host (measured). Set by numpy: ``torch.full`` on the host goes
    through that pool, which llguidance's own threads leave starved (milliseconds, measured)."""
    shape = (num_rows, bitmask_words(vocab_size))
    if not pinned:
        return torch.from_numpy(np.full(shape, -1, dtype=np.int32))
    bitmask = torch.empty(shape, dtype=torch.int32, pin_memory=True)
    bitmask.numpy().fill(-1)
    return bitmask


class GrammarMatcher:
    """One sequence's place in its grammar: ``accept`` each generated token (once, in order),
    ``fill_bitmask`` for the next one."""

    def __init__(self, matcher: llguidance.LLMatcher, end_token_ids: frozenset[int],
                 grammar_eos_ids: Sequence[int]) -> None:
        self.matcher = matcher
        self.end_token_ids = end_token_ids
        # llguidance allows its eos where the grammar may end; ours are the request's end tokens.
        self.eos_not_ending = tuple(t for t in grammar_eos_ids if t not in end_token_ids)
        self.num_accepted = 0

    def accept(self, token_id: int) -> bool:
        """Advance past a generated token; False if the grammar rejects it (the matcher is then in error)."""
        ok = self.matcher.consume_token(token_id)
        self.num_accepted += ok
        return ok

    def rollback(self, num_tokens: int) -> None:
        if not self.matcher.rollback(num_tokens):
            raise RuntimeError(f"the grammar matcher cannot roll back {num_tokens} tokens: {self.error}")
        self.num_accepted -= num_tokens

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete: only an end token may follow."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str:
        return self.matcher.get_error()

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        llguidance.torch.fill_next_token_bitmask(self.matcher, bitmask, row)
        fix_end_tokens([(self, row)], bitmask)


def fix_end_tokens(rows: Sequence[tuple[GrammarMatcher, int]], bitmask: torch.Tensor) -> None:
    """Swap llguidance's eos bits for each row's own end tokens (allowed where its grammar may end).

    Rows whose requests end on the same tokens (usually all of them) are fixed together, one numpy
    operation per token id, not one per row: this runs on the step's critical path."""
    words = bitmask.numpy().view(np.uint32)
    groups: dict[tuple[frozenset[int], tuple[int, ...]], list[tuple[int, bool]]] = {}
    for matcher, row in rows:
        key = (matcher.end_token_ids, matcher.eos_not_ending)
        groups.setdefault(key, []).append((row, matcher.matcher.is_accepting()))
    for (end_token_ids, eos_not_ending), members in groups.items():
        row_ids = np.fromiter((row for row, _ in members), dtype=np.intp, count=len(members))
        may_end = np.fromiter((accepting for _, accepting in members), dtype=bool, count=len(members))
        for token_id in eos_not_ending:
            _set_bits(words, row_ids, token_id, False)
        for token_id in end_token_ids:
            _set_bits(words, row_ids[may_end], token_id, True)
            _set_bits(words, row_ids[~may_end], token_id, False)


def _set_bits(words: np.ndarray, row_ids: np.ndarray, token_id: int, value: bool) -> None:
    word, bit = divmod(token_id, 32)
    if word >= words.shape[1] or not len(row_ids):
        return
    if value:
        words[row_ids, word] |= np.uint32(1 << bit)
    else:
        words[row_ids, word] &= np.uint32(~(1 << bit) & 0xFFFFFFFF)


def fill_threads() -> int:
    """llguidance's threads for a step's rows: every CPU this process may use. The step waits for the
    masks, so the cores are the fill's (llguidance's own default, 80% of them, left an H100's host
    slower: 8 of 16 threads made a constrained batch-32 step 11.0 ms, 12 made it 9.8 ms)."""
    return available_cpus()


class GrammarCompiler:
    """Compiles ``StructuredOutput`` specs for one tokenizer, keeping the latest few compiled."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        """``vocab_size``: the model's (its logits' width), which may exceed the tokenizer's."""
        backend = tokenizer.backend
        self.eos_token_ids = sorted(set(eos_token_ids))
        n_vocab = max(vocab_size, backend.get_vocab_size(with_added_tokens=True))
        # The tokenizer's JSON, as llguidance.hf.from_tokenizer hands it over (without transformers).
        self.tokenizer = llguidance.LLTokenizer(backend.to_str(), n_vocab=n_vocab,
                                                eos_token=self.eos_token_ids or None)
        self.vocab_size = vocab_size
        self._compiled: OrderedDict[StructuredOutput, llguidance.LLMatcher] = OrderedDict()
        self._executor: llguidance.LLExecutor | None = None
        self.fill_s = 0.0  # host seconds in llguidance filling rows (the rest of a step's mask time is ours)

    @property
    def bitmask_vocab_size(self) -> int:
        """Tokens a bitmask row covers (the model's vocabulary, or the tokenizer's if larger)."""
        return self.tokenizer.vocab_size

    def compile(self, structured: StructuredOutput) -> llguidance.LLMatcher:
        """A fresh matcher at the grammar's start; InvalidRequestError with llguidance's reason if
        the spec does not compile."""
        initial = self._compiled.get(structured)
        if initial is None:
            initial = self._compile(structured)
            self._compiled[structured] = initial
            if len(self._compiled) > MAX_CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(structured)
        return initial.deep_copy()

    def _compile(self, structured: StructuredOutput) -> llguidance.LLMatcher:
        what = {"json_schema": "the JSON schema", "json_object": "the JSON object grammar",
                "lark": "the Lark grammar"}[structured.kind]
        try:
            if structured.kind == "lark":
                grammar = llguidance.LLMatcher.grammar_from_lark(structured.spec)
            else:
                schema = structured.spec if structured.kind == "json_schema" else _ANY_OBJECT_SCHEMA
                grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
        except ValueError as error:
            raise InvalidRequestError(f"{what} is not valid: {error}") from None
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(f"{what} cannot be compiled: {matcher.get_error()}")
        return matcher

    def matcher(self, params: SamplingParams) -> GrammarMatcher:
        """A matcher for one request (``params.structured`` set, eos ids attached by ``with_defaults``)."""
        assert params.structured is not None
        end_token_ids = params.all_stop_token_ids(params.eos_token_ids)
        if not end_token_ids:
            raise InvalidRequestError("structured output needs a token to end on: the model has no eos token "
                                      "or ignore_eos is set; send stop_token_ids")
        if params.min_tokens:
            raise InvalidRequestError("min_tokens cannot be combined with structured output: the grammar "
                                      "decides where the output ends")
        return GrammarMatcher(self.compile(params.structured), end_token_ids, self.eos_token_ids)

    def fill_bitmask(self, rows: list[tuple[GrammarMatcher, int]], bitmask: torch.Tensor) -> None:
        """Fill ``bitmask[row]`` for each (matcher, row); several at once on llguidance's threads."""
        started = time.perf_counter()
        if len(rows) > 1:
            if self._executor is None:
                self._executor = llguidance.LLExecutor(num_threads=fill_threads())
            llguidance.torch.fill_next_token_bitmask_par(
                self._executor, [(matcher.matcher, row) for matcher, row in rows], bitmask)
        else:
            for matcher, row in rows:
                llguidance.torch.fill_next_token_bitmask(matcher.matcher, bitmask, row)
        self.fill_s += time.perf_counter() - started
        fix_end_tokens(rows, bitmask)


def llguidance_apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """llguidance's fused (torch.compile) kernel: in place, as ``layers.sampler.apply_token_bitmask``."""
    llguidance.torch.apply_token_bitmask_inplace(logits, bitmask)
