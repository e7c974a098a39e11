"""Per-request sampling settings: how each new token is picked and when generation stops."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..errors import InvalidRequestError
from .structured_output import StructuredOutput

GREEDY_TEMPERATURE = 1e-5  # below this the sampler takes the argmax
MAX_LOGPROBS = 20
MAX_ABS_FREQUENCY_PENALTY = 2.0  # OpenAI's range for frequency and presence penalties
MAX_ABS_LOGIT_BIAS = 100.0  # OpenAI's range: -100 bans a token, +100 all but forces it
MAX_LOGIT_BIAS_TOKENS = 300  # OpenAI's limit on the entries of one request's logit_bias


@dataclass
class SamplingParams:
    """Validated once on arrival; ``stop`` and ``stop_token_ids`` are normalised to lists.

    ``max_tokens=None`` generates until the context (or the KV cache) is full. ``min_tokens``
    generated tokens come before any eos or stop token may end the sequence.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: off
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # top-N logprobs per generated token
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # Added to a token's logit before any mask, penalty or filter: {token id: bias in [-100, 100]}.
    logit_bias: dict[int, float] | None = None
    # Output constrained to a JSON schema, any JSON object or a grammar (engine/grammar.py); None: free text.
    structured: StructuredOutput | None = None
    # The model's eos ids, attached by the engine through with_defaults (not a user setting).
    eos_token_ids: tuple[int, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        _require(_is_int(self.n) and self.n == 1, f"n must be 1: n > 1 is not supported yet (got n={self.n!r})")
        self._check_probabilities()
        self._check_lengths()
        self._check_penalties()
        _require(self.seed is None or _is_int(self.seed), f"seed must be None or an integer, got {self.seed!r}")
        _require(self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
                 f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        self.stop = _stop_strings(self.stop)
        self.stop_token_ids = _stop_token_ids(self.stop_token_ids)
        self.logit_bias = _logit_bias(self.logit_bias)
        _require(self.structured is None or isinstance(self.structured, StructuredOutput),
                 f"structured must be None or a StructuredOutput, got {self.structured!r}")

    def _check_probabilities(self) -> None:
        _require(_is_finite(self.temperature) and self.temperature >= 0,
                 f"temperature must be a finite number >= 0, got {self.temperature!r}")
        _require(_is_finite(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        _require(_is_int(self.top_k) and self.top_k >= -1,
                 f"top_k must be -1 or 0 (off) or an integer >= 1, got {self.top_k!r}")
        _require(_is_finite(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}")

    def _check_lengths(self) -> None:
        _require(self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1),
                 f"max_tokens must be None or an integer >= 1, got {self.max_tokens!r}")
        upper = self.min_tokens if self.max_tokens is None else self.max_tokens
        _require(_is_int(self.min_tokens) and 0 <= self.min_tokens <= upper,
                 f"min_tokens must be an integer >= 0 and <= max_tokens ({self.max_tokens}), got {self.min_tokens!r}")

    def _check_penalties(self) -> None:
        _require(_is_finite(self.repetition_penalty) and self.repetition_penalty > 0,
                 f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        bound = MAX_ABS_FREQUENCY_PENALTY
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            _require(_is_finite(value) and -bound <= value <= bound, f"{name} must be in [-2, 2], got {value!r}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        """Whether sampling reads the sequence's earlier tokens (repetition, frequency, presence)."""
        return self.repetition_penalty != 1.0 or bool(self.frequency_penalty) or bool(self.presence_penalty)

    def with_defaults(self, *, max_tokens: int | None = None, eos_token_ids: Iterable[int] = ()) -> SamplingParams:
        """A validated copy with ``max_tokens`` filled in where it was None and the model's eos ids attached."""
        params = replace(self, max_tokens=self.max_tokens if self.max_tokens is not None else max_tokens)
        params.eos_token_ids = tuple(int(token_id) for token_id in eos_token_ids) or self.eos_token_ids
        return params

    def all_stop_token_ids(self, eos_token_ids: Iterable[int] = ()) -> frozenset[int]:
        """Token ids that end the sequence: ``stop_token_ids`` plus eos (attached and given) unless ``ignore_eos``.

        The sampler masks these while fewer than ``min_tokens`` tokens have been generated.
        """
        ids = set(self.stop_token_ids or ())
        if not self.ignore_eos:
            ids.update(self.eos_token_ids)
            ids.update(eos_token_ids)
        return frozenset(ids)

    def is_stop_token(self, token_id: int, eos_token_ids: frozenset[int] = frozenset()) -> bool:
        """Whether ``token_id`` is in ``all_stop_token_ids(eos_token_ids)``, without building the set."""
        if token_id in (self.stop_token_ids or ()):
            return True
        return not self.ignore_eos and (token_id in self.eos_token_ids or token_id in eos_token_ids)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidRequestError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _stop_strings(stop: str | list[str] | None) -> list[str]:
    if stop is not None and not isinstance(stop, (str, list, tuple)):
        raise InvalidRequestError(f"stop must be a string or a list of strings, got {stop!r}")
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    for text in strings:
        _require(isinstance(text, str), f"stop must be a string or a list of strings, got {text!r}")
        _require(text != "", "stop strings must not be empty")
    return strings


def _logit_bias(bias: dict[int, float] | None) -> dict[int, float] | None:
    """Token ids as ints, biases as floats; None for no bias (an empty map is none)."""
    if bias is None:
        return None
    _require(isinstance(bias, dict), f"logit_bias must be a map of token ids to biases, got {bias!r}")
    _require(len(bias) <= MAX_LOGIT_BIAS_TOKENS,
             f"logit_bias may bias at most {MAX_LOGIT_BIAS_TOKENS} tokens, got {len(bias)}")
    for token_id, value in bias.items():
        _require(_is_int(token_id) and token_id >= 0, f"logit_bias keys must be token ids >= 0, got {token_id!r}")
        _require(_is_finite(value) and -MAX_ABS_LOGIT_BIAS <= value <= MAX_ABS_LOGIT_BIAS,
                 f"logit_bias values must be numbers in [-100, 100], got {value!r} for token {token_id}")
    return {int(token_id): float(value) for token_id, value in bias.items()} or None


def _stop_token_ids(ids: list[int] | None) -> list[int]:
    if ids is not None and not isinstance(ids, (list, tuple)):
        raise InvalidRequestError(f"stop_token_ids must be a list of integers, got {ids!r}")
    values = list(ids or [])
    for token_id in values:
        _require(_is_int(token_id) and token_id >= 0,
                 f"stop_token_ids must be non-negative integers, got {token_id!r}")
    return [int(token_id) for token_id in values]
