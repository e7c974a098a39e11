"""The Responses API's answer: the ``response`` object and its stream of typed events, made from one generation.

Both ``POST /v1/responses`` and the Workers AI run route's Responses-style inputs (``instructions``
/ ``input``) answer through here, so they give the same ``output``: a ``message`` item with one
``output_text`` part (left out when the answer is only tool calls), then one ``function_call`` item
per call. An answer cut at the token cap has ``status: "incomplete"`` and ``incomplete_details:
{"reason": "max_output_tokens"}``. A stream is OpenAI's ``event: <type>`` / ``data: {...}`` pairs
numbered by ``sequence_number``; an error after it began is one ``error`` event.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .generation import Completion, Generation, Usage
from .schemas import TextGenerationInput
from .streaming import error_payload, sse, tool_call_stream
from .text import TokenLogprob
from .tool_parsers import CallDelta, ToolParser, finds_calls
from .tools import Tool, ToolCall, ToolChoice

Item = dict[str, Any]


@dataclass(frozen=True)
class ResponseEcho:
    """What a response repeats of its request beyond the sampling settings (OpenAI echoes them)."""

    instructions: str | None = None
    text_format: dict[str, Any] | None = None  # None: read from the inputs' response_format
    metadata: dict[str, str] = field(default_factory=dict)
    include_logprobs: bool = False  # output_text parts carry their tokens' logprobs


class ResponseFrame:
    """One response's id, creation time and echoed settings; ``snapshot`` is the object at a given status."""

    def __init__(self, model: str, inputs: TextGenerationInput, echo: ResponseEcho | None = None) -> None:
        self.model, self.inputs, self.echo = model, inputs, echo or ResponseEcho()
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created_at = int(time.time())

    def snapshot(self, status: str, output: list[Item], usage: Usage | None = None) -> dict[str, Any]:
        sampling = self.inputs.sampling
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None, "incomplete_details": incomplete, "instructions": self.echo.instructions,
            "max_output_tokens": sampling.max_tokens, "model": self.model, "output": output,
            "parallel_tool_calls": self.inputs.parallel_tool_calls, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": False, "background": False,
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "text": {"format": self._text_format()}, "tool_choice": _choice(self.inputs.tool_choice),
            "tools": [_tool(tool) for tool in self.inputs.tools], "truncation": "disabled",
            "usage": None if usage is None else _usage(usage), "user": None, "metadata": self.echo.metadata,
        }

    def message(self, status: str, text: str = "", logprobs: Sequence[TokenLogprob] = ()) -> Item:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": [item.openai() for item in logprobs]}
        return {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "status": status, "role": "assistant",
                "content": [part]}

    def _text_format(self) -> dict[str, Any]:
        if self.echo.text_format is not None:
            return self.echo.text_format
        structured = self.inputs.response_format
        if structured is None:
            return {"type": "text"}
        if structured.kind == "json_schema":  # the Workers AI route takes no name: the schema alone
            return {"type": "json_schema", "name": "response", "schema": json.loads(structured.spec), "strict": True}
        return {"type": structured.kind}


def response_object(frame: ResponseFrame, completion: Completion, parser: ToolParser) -> dict[str, Any]:
    """The whole answer: a message with the text (unless the answer is only calls), then the calls."""
    status = _status(completion.finish_reason)
    content, calls = (parser.parse(completion.text, frame.inputs.tools) if finds_calls(frame.inputs)
                      else (completion.text, []))
    output = [] if calls and not content else [
        frame.message(status, content, completion.logprobs or () if frame.echo.include_logprobs else ())]
    output += [function_call(call, "completed") for call in calls]
    return frame.snapshot(status, output, completion.usage)


def function_call(call: ToolCall, status: str) -> Item:
    return {"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "status": status, "call_id": call.id,
            "name": call.name, "arguments": call.arguments_json}


async def response_events(generation: Generation, frame: ResponseFrame) -> AsyncIterator[bytes]:
    """The typed events of a streamed response, from ``response.created`` to ``response.completed``
    (``response.incomplete`` when cut at the token cap)."""
    events = _Events()
    yield events.emit("response.created", response=frame.snapshot("in_progress", []))
    yield events.emit("response.in_progress", response=frame.snapshot("in_progress", []))
    output = _StreamedOutput(events, frame)
    try:
        async for piece in _pieces(generation, frame.echo.include_logprobs):
            for chunk in output.text(*piece) if isinstance(piece, tuple) else output.call(piece):
                yield chunk
    except Exception as error:  # the stream has begun: the error can only travel as an event
        payload = error_payload(error)["error"]
        yield events.emit("error", code=str(payload["code"]), message=payload["message"], param=None)
        return
    status = _status(generation.finish_reason or "stop")
    for chunk in output.finish(status):
        yield chunk
    kind = "response.incomplete" if status == "incomplete" else "response.completed"
    yield events.emit(kind, response=frame.snapshot(status, output.items, generation.usage))


async def _pieces(generation: Generation, with_logprobs: bool
                  ) -> AsyncIterator[tuple[str, list[TokenLogprob]] | CallDelta]:
    """The answer as text pieces (with the logprobs of their tokens) and call deltas, in order; text
    that may begin a call is held back until it is known not to."""
    calls, pending = tool_call_stream(generation), []
    async for delta in generation.deltas():
        pending += delta.logprobs or () if with_logprobs else ()
        text, call_deltas = (delta.text, []) if calls is None else calls.add(delta.text)
        if calls is not None and delta.finish_reason is not None:
            rest, _, more = calls.finish()
            text, call_deltas = text + rest, call_deltas + more
        if text:
            yield text, pending
            pending = []
        for call_delta in call_deltas:
            yield call_delta


class _Events:
    """Numbers the events of one stream in the order they are sent."""

    def __init__(self) -> None:
        self.sequence_number = 0

    def emit(self, kind: str, **payload: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence_number, **payload}
        self.sequence_number += 1
        return b"event: " + kind.encode() + b"\n" + sse(event)


class _StreamedOutput:
    """The output items of a stream, each opened when the model starts it and closed when the next
    one starts (or the answer ends); ``items`` are the closed ones, in order."""

    def __init__(self, events: _Events, frame: ResponseFrame) -> None:
        self.events, self.frame = events, frame
        self.items: list[Item] = []
        self.open: Item | None = None

    def text(self, text: str, logprobs: list[TokenLogprob]) -> list[bytes]:
        chunks = [] if self.open is not None and self.open["type"] == "message" else self._open_message()
        assert self.open is not None
        part = self.open["content"][0]
        part["text"] += text
        listed = [item.openai() for item in logprobs]
        part["logprobs"] += listed
        chunks.append(self._emit_in_part("response.output_text.delta", delta=text, logprobs=listed))
        return chunks

    def call(self, delta: CallDelta) -> list[bytes]:
        chunks = []
        if delta.id is not None:  # a new call: its id and name, no arguments yet
            chunks = self._close("completed")
            self.open = function_call(ToolCall(delta.name or "", {}, delta.id, ""), "in_progress")
            chunks.append(self._emit_item("response.output_item.added"))
        if delta.arguments and self.open is not None and self.open["type"] == "function_call":
            self.open["arguments"] += delta.arguments
            chunks.append(self.events.emit("response.function_call_arguments.delta", item_id=self.open["id"],
                                           output_index=len(self.items), delta=delta.arguments))
        return chunks

    def finish(self, status: str) -> list[bytes]:
        """Close the open item; an answer with no item at all still has its (empty) message."""
        chunks = self._open_message() if self.open is None and not self.items else []
        return chunks + self._close(status)

    def _open_message(self) -> list[bytes]:
        chunks = self._close("completed")
        self.open = self.frame.message("in_progress")
        added = self.events.emit("response.output_item.added", output_index=len(self.items),
                                 item={**self.open, "content": []})
        return [*chunks, added, self._emit_in_part("response.content_part.added", part=self._part())]

    def _close(self, status: str) -> list[bytes]:
        item, chunks = self.open, []
        if item is None:
            return chunks
        if item["type"] == "message":
            chunks.append(self._emit_in_part("response.output_text.done", text=item["content"][0]["text"],
                                             logprobs=item["content"][0]["logprobs"]))
            chunks.append(self._emit_in_part("response.content_part.done", part=self._part()))
        else:
            chunks.append(self.events.emit("response.function_call_arguments.done", item_id=item["id"],
                                           output_index=len(self.items), name=item["name"],
                                           arguments=item["arguments"]))
        item["status"] = status
        chunks.append(self._emit_item("response.output_item.done"))
        self.items.append(item)
        self.open = None
        return chunks

    def _part(self) -> Item:
        assert self.open is not None
        return dict(self.open["content"][0])

    def _emit_item(self, kind: str) -> bytes:
        return self.events.emit(kind, output_index=len(self.items), item=self.open)

    def _emit_in_part(self, kind: str, **payload: Any) -> bytes:
        assert self.open is not None
        return self.events.emit(kind, item_id=self.open["id"], output_index=len(self.items), content_index=0,
                                **payload)


def _status(finish_reason: str) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def _usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens}


def _tool(tool: Tool) -> dict[str, Any]:
    return {"type": "function", "name": tool.name, "description": tool.description, "parameters": tool.parameters,
            "strict": False}


def _choice(choice: ToolChoice) -> str | dict[str, str]:
    return {"type": "function", "name": choice.name or ""} if choice.mode == "function" else choice.mode
