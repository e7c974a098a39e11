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
import string
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Protocol

from ..engine.structured_output import StructuredOutput
from .schemas import TextGenerationInput
from .tools import Tool, ToolCall

DEFAULT_TOOL_FORMAT = "llama3_json"
# Calls are written as the model families write them, ``{"name": "f", "arguments": {"a": 1}}``;
# llguidance's own default is compact JSON.
NATIVE_JSON_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


class ChatTokenizer(Protocol):
    chat_templates: dict[str, str]

    def token_to_id(self, token: str) -> int | None: ...


class ToolParser:
    """Finds the calls in an answer (``parse``) and writes the grammar of a forced call (``constraint``)."""

    name: ClassVar[str]
    arguments_key: ClassVar[str] = "arguments"

    def parse(self, text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
        """The answer's text without its calls, and the calls; ``(text, [])`` when it holds none."""
        raise NotImplementedError

    def content_end(self, text: str) -> int:
        """How much of an unfinished answer is surely text (no call can start in it)."""
        raise NotImplementedError

    def constraint(self, tools: Sequence[Tool], parallel: bool) -> StructuredOutput:
        raise NotImplementedError

    def call_schema(self, tools: Sequence[Tool]) -> dict[str, Any]:
        """The JSON schema of one call ``{"name": <a tool>, <arguments_key>: <its parameters>}``."""
        calls = [{"type": "object", "properties": {"name": {"const": tool.name}, self.arguments_key: tool.parameters},
                  "required": ["name", self.arguments_key], "additionalProperties": False} for tool in tools]
        return calls[0] if len(calls) == 1 else {"anyOf": calls}

    def new_call(self, name: str, arguments: dict[str, Any]) -> ToolCall:
        return ToolCall(name, arguments)

    def _call(self, value: Any, tools: Sequence[Tool]) -> ToolCall | None:
        """``value`` as a call of one of ``tools``, or None."""
        if not isinstance(value, dict) or value.get("name") not in {tool.name for tool in tools}:
            return None
        arguments = value.get(self.arguments_key, value.get("arguments", value.get("parameters", {})))
        if isinstance(arguments, str):  # some models write the arguments as JSON text
            arguments = _loads(arguments)
        return self.new_call(value["name"], arguments) if isinstance(arguments, dict) else None


class Llama3JsonParser(ToolParser):
    name = "llama3_json"
    arguments_key = "parameters"
    leads = ("<|python_tag|>", "{")

    def parse(self, text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        for value in _json_values(body, separator=";"):
            call = self._call(value, tools)
            if call is None:
                return text, []
            calls.append(call)
        return ("", calls) if calls else (text, [])

    def content_end(self, text: str) -> int:
        return _lead_content_end(text, self.leads)

    def constraint(self, tools: Sequence[Tool], parallel: bool) -> StructuredOutput:
        if not parallel:
            return native_json(self.call_schema(tools))
        return StructuredOutput.lark(f"start: call (\"; \" call)*\ncall: %json {_native_json_text(self.call_schema(tools))}\n")


class HermesParser(ToolParser):
    name = "hermes"
    open, close = "<tool_call>", "</tool_call>"

    def parse(self, text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
        start = text.find(self.open)
        if start < 0:
            return text, []
        calls, end, position = [], start, start
        while (at := text.find(self.open, position)) >= 0:
            close = text.find(self.close, at)
            values = _json_values(text[at + len(self.open):close if close >= 0 else len(text)].strip(), ",")
            call = self._call(values[0], tools) if len(values) == 1 else None
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
    _ID_CHARS = string.ascii_letters + string.digits

    def parse(self, text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
        body = text.strip().removeprefix("[TOOL_CALLS]").strip()
        values = _json_values(body, ",") if body.startswith(("[", "{")) else []
        if len(values) == 1 and isinstance(values[0], list):
            values = values[0]
        calls = [self._call(value, tools) for value in values]
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

    def new_call(self, name: str, arguments: dict[str, Any]) -> ToolCall:
        # Mistral's templates refuse any id but 9 letters or digits
        return ToolCall(name, arguments, "".join(random.choices(self._ID_CHARS, k=9)))


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


class ToolCallStream:
    """Splits a streamed answer into text that can go out now and, at the end, the calls.

    Text that may begin a call is held back until the answer ends; what was released plus
    ``finish``'s text is the text ``parse`` finds in the whole answer."""

    def __init__(self, parser: ToolParser, tools: Sequence[Tool]) -> None:
        self.parser, self.tools = parser, tools
        self.text = ""
        self.num_released = 0

    def add(self, text: str) -> str:
        self.text += text
        end = self.parser.content_end(self.text)
        if end <= self.num_released:
            return ""
        piece, self.num_released = self.text[self.num_released:end], end
        return piece

    def finish(self) -> tuple[str, list[ToolCall]]:
        content, calls = self.parser.parse(self.text, self.tools)
        return content[self.num_released:], calls


def native_json(schema: dict[str, Any]) -> StructuredOutput:
    # not StructuredOutput.json_schema: it sorts keys, and llguidance writes properties in schema order
    return StructuredOutput("json_schema", _native_json_text(schema))


def _native_json_text(schema: dict[str, Any]) -> str:
    return json.dumps({**schema, "x-guidance": NATIVE_JSON_LAYOUT}, ensure_ascii=False)


def _lead_content_end(text: str, leads: Sequence[str]) -> int:
    """For formats whose calls open the answer: nothing is text while the answer may still be a call."""
    body = text.lstrip()
    if any(lead.startswith(body) or body.startswith(lead) for lead in leads):
        return 0
    return len(text.rstrip())


def _json_values(text: str, separator: str) -> list[Any]:
    """The JSON values of ``text``, one after another, ``separator`` (and whitespace) between them;
    [] when ``text`` is not that."""
    decoder, values, position = json.JSONDecoder(), [], 0
    while position < len(text):
        try:
            value, position = decoder.raw_decode(text, position)
        except ValueError:
            return []
        values.append(value)
        rest = text[position:].lstrip()
        if rest.startswith(separator):
            rest = rest[len(separator):].lstrip()
        elif rest:
            return []
        position = len(text) - len(rest)
    return values


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None

