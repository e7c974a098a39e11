"""Workers AI input validation: the two text-generation shapes, Responses-style input, ranges,
defaults, unsupported features, and embeddings."""

from __future__ import annotations

import json

import pytest

from gpu_backend.server.errors import BadInputError, LoraUnsupportedError
from gpu_backend.server.limits import InputLimits
from gpu_backend.server.schemas import parse_embeddings, parse_stop, parse_text_generation

MODEL = "@cf/edgewise/tiny-shakespeare"


def test_prompt_with_workers_ai_defaults() -> None:
    parsed = parse_text_generation({"prompt": "ROMEO:"}, MODEL)
    assert parsed.prompt == "ROMEO:" and parsed.messages is None
    assert not parsed.raw and not parsed.stream and not parsed.responses_style
    assert parsed.sampling.max_tokens == 256 and parsed.sampling.temperature == 0.6
    assert parsed.sampling.top_p == 1.0 and parsed.sampling.top_k == -1 and parsed.sampling.seed is None


def test_messages_and_every_sampling_field() -> None:
    parsed = parse_text_generation({
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
        "stream": True, "max_tokens": 12, "temperature": 0, "top_p": 0.9, "top_k": 40, "seed": 9_999_999_999,
        "repetition_penalty": 1.2, "frequency_penalty": -0.5, "presence_penalty": 2, "unknown_field": 1,
    }, MODEL)
    assert parsed.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    params = parsed.sampling
    assert parsed.stream and params.max_tokens == 12 and params.is_greedy and params.top_p == 0.9
    assert (params.top_k, params.seed, params.repetition_penalty) == (40, 9_999_999_999, 1.2)
    assert (params.frequency_penalty, params.presence_penalty) == (-0.5, 2.0)


def test_edges_of_workers_ai_ranges() -> None:
    params = parse_text_generation({"prompt": "x", "top_p": 2, "repetition_penalty": 0, "max_tokens": 3.0}, MODEL).sampling
    assert params.top_p == 1.0 and params.repetition_penalty == 1.0 and params.max_tokens == 3
    params = parse_text_generation({"prompt": "x", "top_p": 0}, MODEL).sampling
    assert params.top_k == 1


def test_responses_style_input() -> None:
    parsed = parse_text_generation({"instructions": "Answer in verse.", "input": "What is love?"}, MODEL)
    assert parsed.responses_style and parsed.prompt is None
    assert parsed.messages == [{"role": "system", "content": "Answer in verse."},
                               {"role": "user", "content": "What is love?"}]
    listed = parse_text_generation({"input": [{"role": "user", "content": "hi"}]}, MODEL)
    assert listed.messages == [{"role": "user", "content": "hi"}]


def test_responses_style_items_become_the_chat_turns_they_spell() -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"id": 7}'}
    parsed = parse_text_generation({"input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
        {"role": "user", "content": "Who is 7?"},
        call, {**call, "call_id": "call_2", "arguments": '{"id": 8}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Ada"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "Alan"}]},
    ]}, MODEL)
    assert parsed.messages == [  # the arguments parsed, as chat templates read them
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Who is 7?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": {"id": 7}}},
            {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": {"id": 8}}}]},
        {"role": "tool", "content": "Ada", "tool_call_id": "call_1"},
        {"role": "tool", "content": "Alan", "tool_call_id": "call_2"},
    ]


@pytest.mark.parametrize(("body", "match"), [
    ({}, "required properties at '/' are 'prompt' or 'messages'"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "mutually exclusive"),
    ({"prompt": ""}, "'prompt' must be a non-empty string"),
    ({"prompt": 5}, "'prompt' must be a non-empty string"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"content": "hi"}]}, r"'messages\[0\].role'"),
    ({"messages": [{"role": "user", "content": 3}]}, r"'messages\[0\].content' must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text parts"),
    ({"instructions": "x"}, "'input' is required"),
    ({"prompt": "a", "max_tokens": 0}, "'max_tokens' must be at least 1, got 0"),
    ({"prompt": "a", "max_tokens": "many"}, "'max_tokens' must be an integer"),
    ({"prompt": "a", "temperature": 5.5}, "'temperature' must be between 0 and 5, got 5.5"),
    ({"prompt": "a", "temperature": float("nan")}, "'temperature' must be a number"),
    ({"prompt": "a", "top_k": 51}, "'top_k' must be between 1 and 50"),
    ({"prompt": "a", "seed": 0}, "'seed' must be between 1 and 9999999999"),
    ({"prompt": "a", "frequency_penalty": 3}, "'frequency_penalty' must be between -2 and 2"),
    ({"prompt": "a", "stream": "yes"}, "'stream' must be true or false"),
    ({"prompt": "a", "response_format": {"type": "xml"}}, "'response_format.type' must be"),
    ({"prompt": "a", "tools": [{"name": "f", "parameters": "x"}]}, r"'tools\[0\].parameters' must be a JSON schema"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_inputs_name_the_field(body, match) -> None:
    with pytest.raises(BadInputError, match=match) as caught:
        parse_text_generation(body, MODEL)
    assert caught.value.code == 5006 and caught.value.message.startswith("AiError: Bad input: ")


def test_lora_is_refused_like_workers_ai() -> None:
    with pytest.raises(LoraUnsupportedError) as caught:
        parse_text_generation({"prompt": "a", "lora": "my-adapter"}, MODEL)
    assert (caught.value.status, caught.value.code) == (405, 5005) and MODEL in caught.value.message


def test_embeddings_inputs() -> None:
    assert parse_embeddings({"text": "one"}).texts == ["one"]
    many = parse_embeddings({"text": ["a", "b"], "pooling": "cls"})
    assert many.texts == ["a", "b"] and many.pooling == "cls"
    for body, match in [({}, "'text' is required"), ({"text": []}, "'text' is required"),
                        ({"text": ["a", ""]}, r"'text\[1\]' must be a non-empty string"),
                        ({"text": ["a"] * 101}, "at most 100"), ({"text": "a", "pooling": "max"}, "'pooling'")]:
        with pytest.raises(BadInputError, match=match):
            parse_embeddings(body)


def test_messages_are_capped_in_count_and_in_characters() -> None:
    limits = InputLimits(max_messages=3, max_prompt_chars=10)
    assert len(parse_text_generation({"messages": [{"role": "user", "content": "abc"}] * 3}, MODEL,
                                     limits=limits).messages) == 3
    with pytest.raises(BadInputError, match="'messages' has 4 messages; send at most 3"):
        parse_text_generation({"messages": [{"role": "user", "content": "a"}] * 4}, MODEL, limits=limits)
    with pytest.raises(BadInputError, match="'messages' has 12 characters of content; at most 10 in all"):
        parse_text_generation({"messages": [{"role": "user", "content": "abcdef"}] * 2}, MODEL, limits=limits)
    with pytest.raises(BadInputError, match="'input' has 11 characters of content; at most 10"):
        parse_text_generation({"instructions": "abcdef", "input": "ghijk"}, MODEL, limits=limits)
    with pytest.raises(BadInputError, match="'prompt' has 11 characters; at most 10"):
        parse_text_generation({"prompt": "x" * 11}, MODEL, limits=limits)
    big = [{"role": "user", "content": "x" * 5000}] * 1900  # 9.5 MB: refused before any tokenizing
    with pytest.raises(BadInputError, match="'messages' has 9500000 characters of content; at most 131072"):
        parse_text_generation({"messages": big}, MODEL)
    with pytest.raises(BadInputError, match="'messages' has 2049 messages; send at most 2048"):
        parse_text_generation({"messages": [{"role": "user", "content": "a"}] * 2049}, MODEL)


@pytest.mark.parametrize(("body", "where"), [
    ({"prompt": "ok \ud800"}, "prompt"),
    ({"messages": [{"role": "user", "content": "\udfff"}]}, r"messages\[0\].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a\ud83d"}]}]}, r"messages\[0\].content"),
    ({"messages": [{"role": "us\ud800er", "content": "hi"}]}, r"messages\[0\].role"),
    ({"messages": [{"role": "user", "content": "hi", "name": "\ud800"}]}, r"messages\[0\].name"),
    ({"instructions": "\ud800", "input": "hi"}, "instructions"),
    ({"input": "\ud800"}, "input"),
])
def test_lone_surrogates_are_refused_naming_the_field(body, where) -> None:
    with pytest.raises(BadInputError, match=f"'{where}' has a lone UTF-16 surrogate"):
        parse_text_generation(body, MODEL)
    paired = json.loads('{"prompt": "paired \\ud83d\\ude00"}')  # a surrogate pair is one character
    assert parse_text_generation(paired, MODEL).prompt == "paired \U0001f600"


def test_embedding_texts_are_checked_like_prompts() -> None:
    with pytest.raises(BadInputError, match=r"'text\[1\]' has a lone UTF-16 surrogate \(\\udc00\) at character 0"):
        parse_embeddings({"text": ["fine", "\udc00"]})
    with pytest.raises(BadInputError, match="'text' has 3 items; send at most 2 per request"):
        parse_embeddings({"text": ["a", "b", "c"]}, InputLimits(max_embedding_texts=2))


def test_stop_strings_are_capped_in_count_and_length() -> None:
    assert parse_stop(None) is None and parse_stop("END") == ["END"]
    assert parse_stop(["a"] * 16) == ["a"] * 16 and parse_stop(["x" * 256]) == ["x" * 256]
    for stop, match in [([""], r"'stop\[0\]' is empty"), ("", "'stop' is empty"),
                        (["a"] * 17, "'stop' has 17 strings; send at most 16"),
                        (["a"] * 100_000, "'stop' has 100000 strings; send at most 16"),
                        (["ok", "x" * 257], r"'stop\[1\]' has 257 characters; at most 256"),
                        (["\ud800"], r"'stop\[0\]' has a lone UTF-16 surrogate"),
                        ([1], "'stop' must be a string or a list of strings"), ({"a": 1}, "'stop' must be")]:
        with pytest.raises(BadInputError, match=match) as caught:
            parse_stop(stop)
        assert caught.value.param == "stop"
