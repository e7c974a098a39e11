"""Tool calls in the formats models write them, one small parser per model family, chosen by the chat template.

- ``llama3_json`` (Llama 3.1/3.2, and any model whose template is not one of the others): the answer
  is ``{"name": ..., "parameters": {...}}`` (or ``"arguments"``), optionally after ``<|python_tag|>``,
  several joined by ``;``.
- ``hermes`` (Qwen2.5, Qwen3, Hermes): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
  blocks, possibly after some text.
- ``mistral``: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``.

Special tokens (``<|python_tag|>``, ``[TOOL_CALLS]``) are dropped from the text the service makes,
so each parser reads its format with or without them. A call naming a function the request did
not offer is text, not a call. Each parser also writes the grammar that forces a call in its
format (``constraint``), so a forced call comes out the way the model was trained to write it.
"""

from __future__ import annotations

import json
import random
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

from ..engine.structured_output import StructuredOutput
from .schemas import TextGenerationInput
from .tools import Tool, ToolCall

DEFAULT_TOOL_FORMAT = "llama3_json"
# Calls are written as the model families write them, ``{"name": "f", "arguments": {"a": 1}}``;
# llguidance's own default is compact JSON.
NATIVE_JSON_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
# A call's start up to its arguments object: what a stream needs to send the call's name.
_OPENING = r'\{\s*"name"\s*:\s*"(?P<name>(?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)'


class ChatTokenizer(Protocol):
    chat_templates: dict[str, str]

    def token_to_id(self, token: str) -> int | None: ...


class ToolParser(ABC):
    """Finds the calls in an answer (``parse``) and writes the grammar of a forced call (``constraint``)."""

    name: ClassVar[str]
    arguments_key: ClassVar[str] = "arguments"
    # Where the first call's object may begin (after the text), and what comes between two calls.
    first_call: ClassVar[re.Pattern[str]]
    next_call: ClassVar[re.Pattern[str]]
    calls_lead: ClassVar[bool] = True  # calls only open the answer (no text before them)

    @abstractmethod
    def parse(self, text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
        """The answer's text without its calls, and the calls; ``(text, [])`` when it holds none."""

    @abstractmethod
    def content_end(self, text: str) -> int:
        """How much of an unfinished answer is surely text (no call can start in it)."""

    @abstractmethod
    def constraint(self, tools: Sequence[Tool], parallel: bool) -> StructuredOutput:
        """The grammar of a forced call (several with ``parallel``) in this format."""

    def call_schema(self, tools: Sequence[Tool]) -> dict[str, Any]:
        """The JSON schema of one call ``{"name": <a tool>, <arguments_key>: <its parameters>}``."""
        calls = [{"type": "object", "properties": {"name": {"const": tool.name}, self.arguments_key: tool.parameters},
                  "required": ["name", self.arguments_key], "additionalProperties": False} for tool in tools]
        return calls[0] if len(calls) == 1 else {"anyOf": calls}

    def new_call_id(self) -> str:
        return ToolCall("", {}).id

    def _call(self, value: Any, raw: str, tools: Sequence[Tool]) -> ToolCall | None:
        """``value`` (whose JSON text is ``raw``) as a call of one of ``tools``, or None."""
        if not isinstance(value, dict) or value.get("name") not in {tool.name for tool in tools}:
            return None
        key = next((k for k in (self.arguments_key, "arguments", "parameters") if k in value), None)
        arguments, text = (value[key], _member_text(raw, key)) if key is not None else ({}, None)
        if isinstance(arguments, str):  # some models write the arguments as JSON text
            arguments, text = _loads(arguments), arguments
        if not isinstance(arguments, dict):
            return None
        return ToolCall(value["name"], arguments, self.new_call_id(), text)


class Llama3JsonParser(ToolParser):
    name = "llama3_json"
    arguments_key = "parameters"
    leads = ("<|python_tag|>", "{")
    first_call = re.compile(r"\s*(?:<\|python_tag\|>)?\s*" + _OPENING)
    next_call = re.compile(r"\s*;\s*" + _OPENING)

    def parse(self, text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        for value, raw in _json_values(body, separator=";"):
            call = self._call(value, raw, tools)
            if call is None:
                return text, []
            calls.append(call)
        return ("", calls) if calls else (text, [])

    def content_end(self, text: str) -> int:
        return _lead_content_end(text, self.leads)

    def constraint(self, tools: Sequence[Tool], parallel: bool) -> StructuredOutput:
        if not parallel:
            return native_json(self.call_schema(tools))
        call = f"call: %json {_native_json_text(self.call_schema(tools))}\n"
        return StructuredOutput.lark("start: call (\"; \" call)*\n" + call)


class HermesParser(ToolParser):
    name = "hermes"
    open, close = "<tool_call>", "</tool_call>"
    first_call = re.compile(r"\s*<tool_call>\s*" + _OPENING)
    calls_lead = False
    next_call = re.compile(r"\s*</tool_call>\s*<tool_call>\s*" + _OPENING)

    def parse(self, text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
        start = text.find(self.open)
        if start < 0:
            return text, []
        calls, end, position = [], start, start
        while (at := text.find(self.open, position)) >= 0:
            close = text.find(self.close, at)
            values = _json_values(text[at + len(self.open):close if close >= 0 else len(text)].strip(), ",")
            call = self._call(*values[0], tools) if len(values) == 1 else None
            if call is None:
                return text, []
            calls.append(call)
            end = position = close + len(self.close) if close >= 0 else len(text)
        tail = text[end:].strip()
        return text[:start].rstrip() + (f"\n{tail}" if tail else ""), calls

    def content_end(self, text: str) -> int:
        start = text.find(self.open)
        if start >= 0:
            return len(text[:start].rstrip())
        end = len(text.rstrip())
        for size in range(min(len(self.open) - 1, end), 0, -1):  # a tail that may begin the marker
            if self.open.startswith(text[end - size:end]):
                return len(text[:end - size].rstrip())
        return end

    def constraint(self, tools: Sequence[Tool], parallel: bool) -> StructuredOutput:
        call = f"call: {json.dumps(self.open + chr(10))} %json {_native_json_text(self.call_schema(tools))} " \
               f"{json.dumps(chr(10) + self.close)}\n"
        start = "start: call (\"\\n\" call)*\n" if parallel else "start: call\n"
        return StructuredOutput.lark(start + call)


class MistralParser(ToolParser):
    name = "mistral"
    leads = ("[TOOL_CALLS]", "[")
    first_call = re.compile(r"\s*(?:\[TOOL_CALLS\])?\s*\[\s*" + _OPENING)
    next_call = re.compile(r"\s*,\s*" + _OPENING)
    _ID_CHARS = string.ascii_letters + string.digits

    def parse(self, text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
        body = text.strip().removeprefix("[TOOL_CALLS]").strip()
        values = _json_values(body, ",") if body.startswith(("[", "{")) else []
        if len(values) == 1 and isinstance(values[0][0], list):
            body = values[0][1]
            values = _json_values(body[1:-1].strip(), ",") if body[1:-1].strip() else []
        calls = [self._call(value, raw, tools) for value, raw in values]
        if not calls or None in calls:
            return text, []
        return "", calls  # type: ignore[return-value]

    def content_end(self, text: str) -> int:
        return _lead_content_end(text, self.leads)

    def constraint(self, tools: Sequence[Tool], parallel: bool) -> StructuredOutput:
        schema: dict[str, Any] = {"type": "array", "items": self.call_schema(tools), "minItems": 1}
        if not parallel:
            schema["maxItems"] = 1
        return native_json(schema)

    def new_call_id(self) -> str:
        # Mistral's templates refuse any id but 9 letters or digits
        return "".join(random.choices(self._ID_CHARS, k=9))


TOOL_PARSERS: dict[str, ToolParser] = {parser.name: parser for parser in
                                      (Llama3JsonParser(), HermesParser(), MistralParser())}


def tool_parser(tool_format: str) -> ToolParser:
    return TOOL_PARSERS[tool_format]


def detect_tool_format(tokenizer: ChatTokenizer | None) -> str:
    """The tool format of a model, read from its chat templates and special tokens."""
    if tokenizer is None:
        return DEFAULT_TOOL_FORMAT
    templates = "\n".join(tokenizer.chat_templates.values())
    if HermesParser.open in templates:
        return HermesParser.name
    if "[TOOL_CALLS]" in templates or tokenizer.token_to_id("[TOOL_CALLS]") is not None:
        return MistralParser.name
    return DEFAULT_TOOL_FORMAT


def with_tool_constraint(inputs: TextGenerationInput, parser: ToolParser) -> TextGenerationInput:
    """``inputs`` whose sampling forces a call in the model's format when ``tool_choice`` asks for one."""
    choice = inputs.tool_choice
    if not choice.is_forced:
        return inputs
    tools = [tool for tool in inputs.tools if choice.mode == "required" or tool.name == choice.name]
    structured = parser.constraint(tools, inputs.parallel_tool_calls and choice.mode == "required")
    return replace(inputs, sampling=replace(inputs.sampling, structured=structured))


def finds_calls(inputs: TextGenerationInput) -> bool:
    """Whether the answer is searched for calls: tools offered, calls allowed, no response_format."""
    return bool(inputs.tools) and inputs.tool_choice.mode != "none" and inputs.response_format is None


@dataclass(frozen=True)
class CallDelta:
    """A piece of a streamed call, as OpenAI sends one: the first names the call (``id``, ``name``,
    no arguments), the others carry the next stretch of its arguments' text."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


@dataclass
class _OpenCall:
    """A call being streamed: where its arguments begin and how far they were read and sent."""

    id: str
    start: int  # of the arguments object in the answer
    num_sent: int = 0
    end: int | None = None  # just past the arguments object, once it is closed
    scanned: int = 0  # characters of the arguments read so far (depth, strings)
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    sent: list[str] = field(default_factory=list)


class ToolCallStream:
    """Splits a streamed answer into text that can go out now and the calls, piece by piece.

    Text that may begin a call is held back. Once a call's name is read it goes out (``CallDelta``
    with id and name), then its arguments as they come. ``finish`` parses the whole answer as
    ``parse`` does: the text released plus ``finish``'s is ``parse``'s text, and the deltas of each
    call add up to ``parse``'s call (same id, the arguments as the model wrote them)."""

    def __init__(self, parser: ToolParser, tools: Sequence[Tool]) -> None:
        self.parser, self.tools = parser, tools
        self.names = {tool.name for tool in tools}
        self.text = ""
        self.num_released = 0
        self.open_calls: list[_OpenCall] = []

    def add(self, text: str) -> tuple[str, list[CallDelta]]:
        self.text += text
        piece = ""
        if not self.open_calls:
            end = self.parser.content_end(self.text)
            if end > self.num_released:
                piece, self.num_released = self.text[self.num_released:end], end
        return piece, self._call_deltas()

    def finish(self) -> tuple[str, list[ToolCall], list[CallDelta]]:
        """The text not released yet, the calls, and the deltas not sent yet."""
        content, calls = self.parser.parse(self.text, self.tools)
        if not calls:  # no call after all (or a streamed one was cut off): what is left is text
            return ("" if self.open_calls else content[self.num_released:]), [], []
        deltas: list[CallDelta] = []
        for index, call in enumerate(calls):
            opened = self.open_calls[index] if index < len(self.open_calls) else None
            sent = "".join(opened.sent) if opened is not None else ""
            if opened is not None and call.arguments_json.startswith(sent):
                calls[index] = call = replace(call, id=opened.id)
            else:
                deltas.append(CallDelta(index, "", call.id, call.name))
                sent = ""
            if call.arguments_json[len(sent):]:
                deltas.append(CallDelta(index, call.arguments_json[len(sent):]))
        return content[self.num_released:], calls, deltas

    def _call_deltas(self) -> list[CallDelta]:
        deltas = []
        while True:
            if self.open_calls and self.open_calls[-1].end is None:
                deltas.extend(self._arguments(len(self.open_calls) - 1, self.open_calls[-1]))
                if self.open_calls[-1].end is None:
                    return deltas
            opening = self._next_opening()
            if opening is None:
                return deltas
            call = _OpenCall(self.parser.new_call_id(), opening.end())
            deltas.append(CallDelta(len(self.open_calls), "", call.id, json.loads(f'"{opening["name"]}"')))
            self.open_calls.append(call)

    def _next_opening(self) -> re.Match[str] | None:
        """The next call's opening, once all of it has come and it names one of the tools."""
        if self.open_calls:
            closing = re.compile(r"\s*\}").match(self.text, self.open_calls[-1].end or 0)
            found = closing and self.parser.next_call.match(self.text, closing.end())
        elif self.num_released and self.parser.calls_lead:
            found = None
        else:
            found = self.parser.first_call.match(self.text, self.num_released)
        if found is None or json.loads(f'"{found["name"]}"') not in self.names:
            return None
        return found

    def _arguments(self, index: int, call: _OpenCall) -> list[CallDelta]:
        """The arguments' text that came since the last delta, read up to the object's closing brace."""
        text, position = self.text, call.start + call.scanned
        while position < len(text) and call.end is None:
            char = text[position]
            if call.in_string:
                call.escaped, call.in_string = (False, True) if call.escaped else (char == "\\", char != '"')
            elif char == '"':
                call.in_string = True
            elif char in "{[":
                call.depth += 1
            elif char in "}]":
                call.depth -= 1
                call.end = position + 1 if call.depth == 0 else None
            position += 1
        call.scanned = position - call.start
        piece = text[call.start + call.num_sent:position]
        call.num_sent += len(piece)
        call.sent.append(piece)
        return [CallDelta(index, piece)] if piece else []


def native_json(schema: dict[str, Any]) -> StructuredOutput:
    return StructuredOutput.json_schema({**schema, "x-guidance": NATIVE_JSON_LAYOUT})


def _native_json_text(schema: dict[str, Any]) -> str:
    return json.dumps({**schema, "x-guidance": NATIVE_JSON_LAYOUT}, ensure_ascii=False)


def _lead_content_end(text: str, leads: Sequence[str]) -> int:
    """For formats whose calls open the answer: nothing is text while the answer may still be a call."""
    body = text.lstrip()
    if any(lead.startswith(body) or body.startswith(lead) for lead in leads):
        return 0
    return len(text.rstrip())


def _json_values(text: str, separator: str) -> list[tuple[Any, str]]:
    """The JSON values of ``text`` with their text, one after another, ``separator`` (and whitespace)
    between them; [] when ``text`` is not that."""
    decoder, values, position = json.JSONDecoder(), [], 0
    while position < len(text):
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            return []
        values.append((value, text[position:end]))
        rest = text[end:].lstrip()
        if rest.startswith(separator):
            rest = rest[len(separator):].lstrip()
        elif rest:
            return []
        position = len(text) - len(rest)
    return values


def _member_text(text: str, key: str) -> str | None:
    """The text of member ``key``'s value in ``text``, a JSON object's valid text."""
    decoder, position = json.JSONDecoder(), _skip_space(text, 1)
    while position < len(text) and text[position] != "}":
        name, position = decoder.raw_decode(text, position)
        start = _skip_space(text, _skip_space(text, position) + 1)  # past the ':'
        _, end = decoder.raw_decode(text, start)
        if name == key:
            return text[start:end]
        position = _skip_space(text, end)
        position = _skip_space(text, position + 1) if text[position] == "," else position
    return None


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None

