"""OpenAI's ``chat.completion`` and ``text_completion`` answers, whole and streamed as chunks.

The OpenAI routes answer in these shapes, and so does the Workers AI run route for the names whose
Workers AI schema is OpenAI's (answer_shapes.py). A stream is OpenAI's chunk SSE ending in ``data:
[DONE]``; a chat answer's tool calls come as ``message.tool_calls`` with ``finish_reason:
"tool_calls"``; streamed, each call is one delta with its id, type, name and empty arguments, then
deltas with its arguments as they come.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from .generation import Completion, Generation
from .streaming import DONE, error_payload, sse, tool_call_stream
from .text import TextDelta, TokenLogprob
from .schemas import TextGenerationInput
from .tool_parsers import CallDelta, ToolCallStream, ToolParser, finds_calls
from .tools import ToolCall


class CompletionFrames:
    """The response objects of one completion, chat or text: the whole answer, or its stream's chunks."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def answer(self, inputs: TextGenerationInput, completion: Completion, parser: ToolParser) -> dict[str, Any]:
        """The whole answer, with the tool calls the model's text holds when the request offered tools."""
        found = finds_calls(inputs)
        content, calls = parser.parse(completion.text, inputs.tools) if found else (completion.text, [])
        return self.whole(completion, content, calls)

    def whole(self, completion: Completion, content: str, calls: list[ToolCall]) -> dict[str, Any]:
        finish_reason = "tool_calls" if calls else finish_reason_of(completion.finish_reason)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason,
                                  "logprobs": self.logprobs(completion.logprobs)}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": content or (None if calls else content),
                                 "refusal": None}
            if calls:
                choice["message"]["tool_calls"] = [call.openai() for call in calls]
        else:
            choice["text"] = content
        return self._frame(self.object, [choice], usage=completion.usage.openai())

    def tool_call(self, call: CallDelta) -> dict[str, Any]:
        """A call's chunk, as OpenAI streams them: its id, type and name first, then pieces of its arguments."""
        delta: dict[str, Any] = {"index": call.index, "function": {"arguments": call.arguments}}
        if call.id is not None:
            delta.update(id=call.id, type="function", function={"name": call.name, "arguments": call.arguments})
        return self._frame(self._chunk_object, [{"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None,
                                                 "logprobs": None}])

    def piece(self, text: str | None, finish_reason: str | None, first: bool = False,
              logprobs: Sequence[TokenLogprob] | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason_of(finish_reason),
                                  "logprobs": self.logprobs(logprobs)}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        return self._frame(self._chunk_object, [choice])

    def usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        return self._frame(self._chunk_object, [], usage=usage)

    def logprobs(self, logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
        """Chat's ``{content: [{token, logprob, bytes, top_logprobs}]}``, or completions' legacy lists."""
        if logprobs is None:
            return None
        if self.chat:
            return {"content": [item.openai() for item in logprobs], "refusal": None}
        offsets = list(itertools.accumulate((len(item.token) for item in logprobs), initial=0))[:-1]
        return {"tokens": [item.token for item in logprobs], "token_logprobs": [item.logprob for item in logprobs],
                "top_logprobs": [dict(item.top) for item in logprobs], "text_offset": offsets}

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _frame(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **extra}


async def completion_events(generation: Generation, chunk: CompletionFrames, include_usage: bool) -> AsyncIterator[bytes]:
    try:
        if chunk.chat:
            yield sse(chunk.piece("", None, first=True))
        calls = tool_call_stream(generation) if chunk.chat else None
        deltas = generation.deltas() if calls is None else _with_calls(generation, calls, chunk)
        async for delta in deltas:
            if isinstance(delta, bytes):
                yield delta
            elif delta.text or delta.finish_reason is not None or delta.logprobs:
                yield sse(chunk.piece(delta.text if delta.text or not chunk.chat else None, delta.finish_reason,
                                      logprobs=delta.logprobs if generation.request.sampling.logprobs is not None
                                      else None))
        if include_usage:
            yield sse(chunk.usage(generation.usage.openai()))
    except Exception as error:  # the stream has begun: the error can only travel as an event
        payload = error_payload(error)["error"]
        yield sse({"error": {"message": payload["message"], "type": "server_error", "param": None,
                             "code": payload["code"]}})
        return
    yield DONE


async def _with_calls(generation: Generation, calls: ToolCallStream, chunk: CompletionFrames) -> AsyncIterator[TextDelta | bytes]:
    """The deltas with text that may begin a call held back; at the end the calls' chunks, then the last
    delta (``finish_reason`` "tool_calls" when there were calls)."""
    async for delta in generation.deltas():
        text, call_deltas = calls.add(delta.text)
        found: list[ToolCall] = []
        if delta.finish_reason is not None:
            rest, found, more = calls.finish()
            text, call_deltas = text + rest, call_deltas + more
        if text:
            yield replace(delta, text=text, finish_reason=None)
        for call_delta in call_deltas:
            yield sse(chunk.tool_call(call_delta))
        if delta.finish_reason is not None:
            yield replace(delta, text="", finish_reason="tool_calls" if found else delta.finish_reason)



def finish_reason_of(reason: str | None) -> str | None:
    return None if reason is None else (reason if reason in ("length", "tool_calls") else "stop")
