"""Chat templates: rendered prompts and their token ids equal transformers' apply_chat_template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpu_backend.errors import InvalidRequestError
from gpu_backend.tokenizer import Tokenizer

from tokenizer_fixtures import (
    LLAMA2_CHAT_TEMPLATE,
    build_byte_level_tokenizer,
    build_sentencepiece_tokenizer,
    load_reference_tokenizer,
)

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  What is 2+2?  "}],
    [
        {"role": "system", "content": "Answer in verse."},
        {"role": "user", "content": "Who is Romeo? 😀"},
        {"role": "assistant", "content": "A Montague, 中文 é."},
        {"role": "user", "content": "And Juliet?"},
    ],
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo du jour — today's weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_byte_level_tokenizer(tmp_path_factory.mktemp("byte_level"))


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sentencepiece_tokenizer(tmp_path_factory.mktemp("sentencepiece"))


def write_config_template(folder: Path, template: Any) -> Path:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def assert_same_as_transformers(folder: Path, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    ours, reference = Tokenizer.from_pretrained(folder), load_reference_tokenizer(folder)
    for add_generation_prompt in (True, False):
        expected = reference.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                 tokenize=False, **kwargs)
        expected_ids = reference.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                     tokenize=True, return_dict=False, **kwargs)
        text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        assert text == expected
        assert ours.apply_chat_template(messages, add_generation_prompt, tokenize=True, **kwargs) == expected_ids
    return ours.apply_chat_template(messages, **kwargs)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_llama3_template_equals_transformers(byte_level: Path, messages: list[dict[str, Any]]) -> None:
    text = assert_same_as_transformers(byte_level, messages)  # date from strftime_now
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday Date: ")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert_same_as_transformers(byte_level, messages, date_string="26 Jul 2024")


def test_llama3_template_token_ids(byte_level: Path) -> None:
    tok = Tokenizer.from_pretrained(byte_level)
    ids = tok.apply_chat_template(CONVERSATIONS[0], tokenize=True, date_string="1 Jan 2025")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # not added twice
    assert ids[-3:] == [tok.token_to_id("<|end_header_id|>")] + tok.encode("\n\n", add_special_tokens=False)


def test_tools_are_rendered_as_indented_unicode_json(byte_level: Path) -> None:
    text = assert_same_as_transformers(byte_level, CONVERSATIONS[1], tools=[WEATHER_TOOL], date_string="1 Jan 2025")
    assert json.dumps(WEATHER_TOOL, ensure_ascii=False, indent=4) in text
    assert "Météo" in text


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_zephyr_template_equals_transformers(sentencepiece: Path, messages: list[dict[str, Any]]) -> None:
    text = assert_same_as_transformers(sentencepiece, messages)
    assert text.endswith("</s>\n<|assistant|>\n")  # trim_blocks + lstrip_blocks layout


def test_llama2_template_string_form_and_raise_exception(tmp_path: Path) -> None:
    folder = write_config_template(build_sentencepiece_tokenizer(tmp_path), LLAMA2_CHAT_TEMPLATE)
    text = assert_same_as_transformers(folder, CONVERSATIONS[2])
    assert text.startswith("<s>[INST] <<SYS>>\nAnswer in verse.\n<</SYS>>\n\nWho is Romeo?")
    tok = Tokenizer.from_pretrained(folder)
    with pytest.raises(InvalidRequestError, match="must alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "first"}])


def test_named_templates_pick_tool_use_when_tools_are_given(tmp_path: Path) -> None:
    templates = [
        {"name": "default", "template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
        {"name": "tool_use",
         "template": "TOOLS {{ tools | tojson }} {% for m in messages %}{{ m.content }}{% endfor %}"},
    ]
    folder = write_config_template(build_sentencepiece_tokenizer(tmp_path), templates)
    assert_same_as_transformers(folder, CONVERSATIONS[0])
    text = assert_same_as_transformers(folder, CONVERSATIONS[0], tools=[WEATHER_TOOL])
    assert text.startswith("TOOLS [{") and "Météo" in text


def test_template_files_take_priority_over_the_config(tmp_path: Path) -> None:
    folder = write_config_template(build_byte_level_tokenizer(tmp_path), "CONFIG {{ messages[0].content }}")
    (folder / "chat_template.jinja").write_text("FILE {{ messages[0].content }}")
    extra = folder / "additional_chat_templates"
    extra.mkdir()
    (extra / "tool_use.jinja").write_text("TOOL FILE {{ tools[0].function.name }}")
    assert assert_same_as_transformers(folder, CONVERSATIONS[0]) == "FILE Hello!"
    assert assert_same_as_transformers(folder, CONVERSATIONS[0], tools=[WEATHER_TOOL]) == "TOOL FILE get_weather"


def test_none_values_are_dropped_and_reasoning_is_aliased(tmp_path: Path) -> None:
    template = (
        "{% for m in messages %}[{{ m.role }}|{{ m.content if m.content is defined else 'NO CONTENT' }}"
        "|{{ m.reasoning_content | default('') }}]{% endfor %}"
        "{% generation %}{{ 'gen' }}{% endgeneration %}"
    )
    folder = write_config_template(build_sentencepiece_tokenizer(tmp_path), template)
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": None, "reasoning": "think"},
    ]
    text = assert_same_as_transformers(folder, messages)
    assert text == "[user|hi|][assistant|NO CONTENT|think]gen"


def test_special_tokens_and_kwargs_are_template_variables(tmp_path: Path) -> None:
    template = "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ enable_thinking | default('-') }}"
    folder = write_config_template(build_sentencepiece_tokenizer(tmp_path), template)
    assert assert_same_as_transformers(folder, CONVERSATIONS[0]) == "<s>|</s>|<unk>|</s>|-"
    assert assert_same_as_transformers(folder, CONVERSATIONS[0], enable_thinking=False) == "<s>|</s>|<unk>|</s>|False"


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages.append({'role': 'user'}) }}",  # immutable sandbox: no mutation of inputs
        "{{ ''.__class__.__mro__ }}",  # no way out to Python internals
        "{% set ns = namespace(_secret=1) %}{{ ns._secret }}",
    ],
)
def test_templates_run_sandboxed(tmp_path: Path, template: str) -> None:
    tok = Tokenizer.from_pretrained(write_config_template(build_sentencepiece_tokenizer(tmp_path), template))
    with pytest.raises(InvalidRequestError):
        tok.apply_chat_template(CONVERSATIONS[0])


def test_no_chat_template_is_an_invalid_request(tmp_path: Path) -> None:
    folder = build_byte_level_tokenizer(tmp_path / "my-base-model")
    (folder / "chat_template.jinja").unlink()
    tok = Tokenizer.from_pretrained(folder)
    assert not tok.has_chat_template
    with pytest.raises(InvalidRequestError, match="model my-base-model has no chat template; send a prompt instead"):
        tok.apply_chat_template(CONVERSATIONS[0])


def test_empty_conversation_is_an_invalid_request(sentencepiece: Path) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        Tokenizer.from_pretrained(sentencepiece).apply_chat_template([])
