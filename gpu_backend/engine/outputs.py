"""What a request produces: ``EngineOutput`` (token ids, what every engine streams to the service)
and ``RequestOutput`` (cumulative, with text: what the offline ``LLM``/``LLMEngine`` return, in the
vocabulary vLLM users know, ``RequestOutput.outputs[0].text``).

An ``EngineOutput`` holds only what one step added, so emitting one costs the same at the first
token and the thousandth; the service makes the text from its ids (``detokenizer.RequestText``).
``RequestOutput`` also answers ``.text``, ``.token_ids`` and ``.finish_reason`` directly, since a
request has one completion, and ``delta_text`` / ``delta_token_ids`` for what the step added.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .sequence import FinishReason


@dataclass
class Logprob:
    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)  # the N most likely tokens of that step


@dataclass(frozen=True)
class EngineOutput:
    """What one step added to one request: its new token ids (and their logprobs when asked), the
    request's counts so far, and why it finished (the last output of a request has it set)."""

    request_id: str
    new_token_ids: tuple[int, ...]
    num_prompt_tokens: int
    num_completion_tokens: int  # so far, the new ones included
    num_cached_tokens: int = 0  # prompt tokens the prefix cache served
    finish_reason: FinishReason | None = None  # "stop", "length" or "abort"
    new_logprobs: tuple[Logprob, ...] | None = None  # one per new token, when the request asked for logprobs

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    logprobs: list[Logprob] | None = None

    @property
    def cumulative_logprob(self) -> float | None:
        return None if self.logprobs is None else sum(item.logprob for item in self.logprobs)


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason
