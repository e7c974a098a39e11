"""Tool-call parsers on literal model outputs, their streaming split, and the grammars of forced calls.

The grammars are checked with llguidance itself (the engine's grammar library): each compiles, accepts
the native text of a valid call, and refuses a call whose arguments break the tool's parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import llguidance
import pytest

from gpu_backend.server.tool_parsers import (HermesParser, Llama3JsonParser, MistralParser, ToolCallStream,
                                             ToolParser, detect_tool_format)
from gpu_backend.server.tools import Tool
from gpu_backend.tokenizer import Tokenizer

WEATHER = Tool("get_weather", "The weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"], "additionalProperties": False})
TIME = Tool("get_time", "", {"type": "object", "properties": {}})
TOOLS = [WEATHER, TIME]

LLAMA = Llama3JsonParser()
HERMES = HermesParser()
MISTRAL = MistralParser()


@pytest.mark.parametrize(("parser", "text", "calls", "content"), [
    # Llama 3.1 / 3.2: JSON with "parameters", with or without <|python_tag|>, several joined by ";"
    (LLAMA, '{"name": "get_weather", "parameters": {"city": "Paris"}}', [("get_weather", {"city": "Paris"})], ""),
    (LLAMA, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}<|eom_id|>'
            .removesuffix("<|eom_id|>"), [("get_weather", {"city": "Paris", "unit": "c"})], ""),
    (LLAMA, '  {"name": "get_time", "arguments": {}}; {"name": "get_weather", "parameters": {"city": "Oslo"}}',
     [("get_time", {}), ("get_weather", {"city": "Oslo"})], ""),
    (LLAMA, '{"name": "get_weather", "parameters": "{\\"city\\": \\"Rome\\"}"}', [("get_weather", {"city": "Rome"})],
     ""),
    (LLAMA, "It is sunny in Paris.", [], "It is sunny in Paris."),
    (LLAMA, '{"name": "launch_rocket", "parameters": {}}', [], '{"name": "launch_rocket", "parameters": {}}'),
    (LLAMA, '{"name": "get_weather", "parameters": {"city": "Par', [], '{"name": "get_weather", "parameters": {"city": "Par'),
    # Qwen2.5 / Qwen3 (Hermes): <tool_call> blocks, possibly after text
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     [("get_weather", {"city": "Paris"})], ""),
    (HERMES, 'Let me check.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
     [("get_weather", {"city": "Paris"}), ("get_time", {})], "Let me check."),
    (HERMES, '<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
             '{"city": "Lima"}}\n</tool_call>', [("get_weather", {"city": "Lima"})],
     "<think>\nThe user wants the weather.\n</think>"),
    (HERMES, "No tools needed: 4.", [], "No tools needed: 4."),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": ', [],
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": '),
    # Mistral: [TOOL_CALLS] and a JSON list (the marker is a special token, gone from decoded text)
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
     [("get_weather", {"city": "Paris"})], ""),
    (MISTRAL, ' [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]',
     [("get_weather", {"city": "Paris"}), ("get_time", {})], ""),
    (MISTRAL, "[1, 2, 3]", [], "[1, 2, 3]"),
    (MISTRAL, "Bonjour !", [], "Bonjour !"),
])
def test_literal_model_outputs(parser: ToolParser, text: str, calls: list, content: str) -> None:
    found_content, found = parser.parse(text, TOOLS)
    assert [(call.name, call.arguments) for call in found] == calls
    assert found_content == content


def test_call_ids_are_openai_style_and_mistral_style() -> None:
    _, [call] = LLAMA.parse('{"name": "get_time", "parameters": {}}', TOOLS)
    assert call.id.startswith("call_") and len(call.id) > 10
    assert call.openai() == {"id": call.id, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    _, [call] = MISTRAL.parse('[{"name": "get_time", "arguments": {}}]', TOOLS)
    assert len(call.id) == 9 and call.id.isalnum()  # Mistral's templates take no other id


@pytest.mark.parametrize(("parser", "text"), [
    (HERMES, 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
    (HERMES, "Plain <tool text, no call < at all."),
    (LLAMA, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'),
    (LLAMA, "Just words, then {braces}."),
    (LLAMA, '{"not": "a call"}'),
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_time", "arguments": {}}]'),
    (MISTRAL, "Texte simple."),
])
@pytest.mark.parametrize("piece_chars", [1, 3, 1000])
def test_streamed_pieces_reassemble_to_the_parsed_answer(parser: ToolParser, text: str, piece_chars: int) -> None:
    stream = ToolCallStream(parser, TOOLS)
    released, deltas = "", []
    for i in range(0, len(text), piece_chars):
        piece, call_deltas = stream.add(text[i:i + piece_chars])
        released, deltas = released + piece, deltas + call_deltas
    rest, calls, more = stream.finish()
    content, expected = parser.parse(text, TOOLS)
    assert released + rest == content
    assert [(c.name, c.arguments, c.arguments_json) for c in calls] == \
        [(c.name, c.arguments, c.arguments_json) for c in expected]
    assembled: dict[int, list[str]] = {}
    for delta in deltas + more:
        if delta.id is not None:  # a call's first delta: its id and name, no arguments yet
            assert delta.index == len(assembled) and delta.arguments == ""
            assembled[delta.index] = [delta.id, delta.name, ""]
        else:
            assert delta.name is None
            assembled[delta.index][2] += delta.arguments
    assert list(assembled.values()) == [[c.id, c.name, c.arguments_json] for c in calls]
    if expected:
        assert "<tool_call>" not in released and "{" not in released  # no piece of a call went out as text


def test_a_call_streams_as_it_is_written() -> None:
    stream = ToolCallStream(HERMES, TOOLS)
    assert stream.add("Checking.\n<tool_call>\n{\"name\": \"get_wea") == ("Checking.", [])
    piece, [opening, first] = stream.add('ther", "arguments": {"ci')
    assert piece == "" and (opening.index, opening.name, opening.arguments) == (0, "get_weather", "")
    assert opening.id.startswith("call_") and (first.id, first.arguments) == (None, '{"ci')
    assert [d.arguments for d in stream.add('ty": "Paris"}}\n</tool_call>')[1]] == ['ty": "Paris"}']
    rest, [call], more = stream.finish()
    assert rest == "" and more == [] and call.id == opening.id and call.arguments == {"city": "Paris"}


def test_arguments_are_answered_as_the_model_wrote_them() -> None:
    _, [call] = LLAMA.parse('{"name": "get_weather", "parameters": {"city":"Paris",  "unit": "c"}}', TOOLS)
    assert call.arguments_json == '{"city":"Paris",  "unit": "c"}' and call.arguments == {"city": "Paris", "unit": "c"}
    _, [call] = LLAMA.parse('{"parameters": {"unit": "f"}, "name": "get_weather"}', TOOLS)
    assert call.arguments_json == '{"unit": "f"}'


def test_text_that_may_begin_a_call_is_held_back() -> None:
    stream = ToolCallStream(HERMES, TOOLS)
    assert stream.add("Sure. <tool") == ("Sure.", [])
    assert stream.add("_call>\n{") == ("", [])
    stream = ToolCallStream(LLAMA, TOOLS)
    assert stream.add(" {") == ("", []) and stream.add('"name"') == ("", [])
    stream = ToolCallStream(LLAMA, TOOLS)
    assert stream.add("Hello ") == ("Hello", []) and stream.add("there") == (" there", [])
    assert stream.add(' {"name": "get_time", "parameters": {}}') == (' {"name": "get_time", "parameters": {}}', [])


@pytest.fixture(scope="module")
def guidance_tokenizer(checkpoints: dict[str, Path]) -> llguidance.LLTokenizer:
    folder = checkpoints["llama"]
    eos = Tokenizer.from_pretrained(folder).token_to_id("<|eot_id|>")
    return llguidance.LLTokenizer((folder / "tokenizer.json").read_text(), eos_token=eos)


def _accepts(tokenizer: llguidance.LLTokenizer, grammar: str, text: str) -> bool:
    matcher = llguidance.LLMatcher(tokenizer, grammar)
    assert not matcher.is_error(), matcher.get_error()
    return matcher.consume_tokens(tokenizer.tokenize_str(text)) and matcher.is_accepting()


def _grammar(parser: ToolParser, tools: list[Tool], parallel: bool) -> str:
    constraint = parser.constraint(tools, parallel)
    if constraint.kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(constraint.spec)
    return llguidance.LLMatcher.grammar_from_json_schema(json.loads(constraint.spec))


NATIVE = {
    "llama3_json": ('{{"name": "{name}", "parameters": {args}}}', "; "),
    "hermes": ('<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>', "\n"),
    "mistral": ('{{"name": "{name}", "arguments": {args}}}', ", "),
}


def _native(parser: ToolParser, calls: list[tuple[str, dict]]) -> str:
    template, separator = NATIVE[parser.name]
    text = separator.join(template.format(name=name, args=json.dumps(args))
                          for name, args in calls)
    return f"[{text}]" if parser.name == "mistral" else text


@pytest.mark.parametrize("parser", [LLAMA, HERMES, MISTRAL], ids=lambda p: p.name)
def test_forced_call_grammar_takes_valid_calls_only(parser: ToolParser,
                                                   guidance_tokenizer: llguidance.LLTokenizer) -> None:
    single = _grammar(parser, [WEATHER], parallel=False)
    assert llguidance.LLMatcher.validate_grammar(single) == ""
    valid = _native(parser, [("get_weather", {"city": "Paris", "unit": "c"})])
    assert _accepts(guidance_tokenizer, single, valid)
    assert parser.parse(valid, TOOLS)[1][0].arguments == {"city": "Paris", "unit": "c"}
    assert not _accepts(guidance_tokenizer, single, _native(parser, [("get_weather", {"unit": "c"})]))  # no city
    assert not _accepts(guidance_tokenizer, single, _native(parser, [("get_weather", {"city": "P", "x": 1})]))
    assert not _accepts(guidance_tokenizer, single, _native(parser, [("get_time", {})]))  # not the named tool
    assert not _accepts(guidance_tokenizer, single, "It is sunny.")
    two = [("get_weather", {"city": "Oslo"}), ("get_time", {})]
    assert not _accepts(guidance_tokenizer, single, _native(parser, two))
    parallel = _grammar(parser, TOOLS, parallel=True)
    assert _accepts(guidance_tokenizer, parallel, _native(parser, two))
    assert _accepts(guidance_tokenizer, parallel, _native(parser, [("get_time", {})]))
    assert [c.name for c in parser.parse(_native(parser, two), TOOLS)[1]] == ["get_weather", "get_time"]


def test_tool_format_comes_from_the_chat_template() -> None:
    class Templates:
        def __init__(self, template: str, tokens: tuple[str, ...] = ()) -> None:
            self.chat_templates, self.tokens = {"default": template}, tokens

        def token_to_id(self, token: str) -> int | None:
            return 7 if token in self.tokens else None

    qwen = "{%- for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>\n{\"name\": <function-name>}</tool_call>"
    assert detect_tool_format(Templates(qwen)) == "hermes"
    assert detect_tool_format(Templates("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}")) == "mistral"
    assert detect_tool_format(Templates("{{ bos_token }}", ("[TOOL_CALLS]",))) == "mistral"
    assert detect_tool_format(Templates("<|start_header_id|>ipython<|end_header_id|><|python_tag|>")) == "llama3_json"
    assert detect_tool_format(None) == "llama3_json"
