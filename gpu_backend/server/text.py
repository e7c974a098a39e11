"""Text, made once per request, where the request is served.

Engines stream token ids (``EngineOutput``), whichever process sampled them: this process, the
ranks of a sharded model, or a prefill instance for the first token and a decode instance for the
rest. Here each request's ids go through one ``RequestText`` (incremental detokenizer and stop
strings), so its text, where it stops and its usage are the same whatever served it. A stop
string closes the engine's stream at once, which aborts the request on every instance and frees
its KV blocks; the client gets finish_reason "stop", the text cut at the stop, and usage that
counts the tokens up to the one that completed it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..detokenizer import RequestText, TextUpdate
from ..engine.contract import Engine
from ..engine.outputs import EngineOutput, Logprob
from ..engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

IMPOSSIBLE_LOGPROB = -9999.0  # OpenAI's figure for a token the model gave no chance


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's logprob with its text, and the most likely tokens of that step, most likely first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()

    def openai(self) -> dict[str, Any]:
        """OpenAI's chat shape: ``{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}``."""
        return {**_openai_token(self.token, self.logprob),
                "top_logprobs": [_openai_token(token, logprob) for token, logprob in self.top]}


def _openai_token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


@dataclass(frozen=True)
class TextDelta:
    """What one engine output added to a generation; the last one has ``finish_reason`` set."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int  # so far
    finish_reason: str | None = None  # "stop", "length" or "abort"
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token of token_ids, when the request asked
    num_cached_tokens: int = 0  # prompt tokens the prefix cache served


async def stream_text(engine: Engine, prompt_ids: list[int], params: SamplingParams, request_id: str,
                      session: str | None = None) -> AsyncIterator[TextDelta]:
    """One generation as text; leaving early aborts it (and frees its KV blocks) like a stop string does."""
    text = RequestText(engine.tokenizer, stop=params.stop, skip_special_tokens=params.skip_special_tokens,
                       include_stop_str_in_output=params.include_stop_str_in_output)
    async with aclosing(engine.generate(prompt_ids, params, request_id, session)) as outputs:
        async for output in outputs:
            update = text.add(output.new_token_ids, finished=output.finished, stop_token=output.finish_reason == "stop")
            delta = text_delta(output, update, engine.tokenizer)
            if delta.finish_reason is not None and not output.finished:
                await outputs.aclose()  # a stop string: the request ends on every instance now
            yield delta
            if delta.finish_reason is not None:
                return


def text_delta(output: EngineOutput, update: TextUpdate, tokenizer: Tokenizer | None = None) -> TextDelta:
    """The client's view of an output: its ids, logprobs and counts cut where a stop string ended the text."""
    dropped = len(output.new_token_ids) - update.num_tokens  # sampled after the stop
    logprobs = None
    if output.new_logprobs is not None:
        logprobs = tuple(token_logprob(item, tokenizer) for item in output.new_logprobs[:update.num_tokens])
    return TextDelta(update.text, list(output.new_token_ids[:update.num_tokens]), output.num_prompt_tokens,
                     output.num_completion_tokens - dropped,
                     update.finish_reason(output.finish_reason, len(output.new_token_ids)), logprobs,
                     output.num_cached_tokens)


def token_logprob(item: Logprob, tokenizer: Tokenizer | None) -> TokenLogprob:
    # a grammar's masked tokens have -inf: they could not be sampled, so they are not listed (nor JSON numbers)
    top = sorted(((token_id, logprob) for token_id, logprob in item.top.items() if math.isfinite(logprob)),
                 key=lambda pair: -pair[1])
    logprob = item.logprob if math.isfinite(item.logprob) else IMPOSSIBLE_LOGPROB
    return TokenLogprob(_token_text(item.token_id, tokenizer), logprob,
                        tuple((_token_text(token_id, tokenizer), logprob) for token_id, logprob in top))


def _token_text(token_id: int, tokenizer: Tokenizer | None) -> str:
    # one token alone: a piece of a multi-byte character decodes to U+FFFD, as OpenAI's token strings do
    return "" if tokenizer is None else tokenizer.decode([token_id], skip_special_tokens=False)
