"""Tokenizer: encode/decode and special tokens equal transformers' AutoTokenizer on locally built folders."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from gpu_backend.errors import CheckpointError
from gpu_backend.tokenizer import Tokenizer

from tokenizer_fixtures import (
    build_byte_level_tokenizer,
    build_sentencepiece_tokenizer,
    build_wordpiece_tokenizer,
    load_reference_tokenizer,
    shakespeare_text,
)

TEXTS = [
    "Hello world",
    " leading space",
    "  two leading spaces",
    "trailing spaces  ",
    "emoji 😀 👨‍👩‍👧 and 中文字符 🇫🇷 é ñ",
    "ROMEO:\nWhat, ho!\n\n  indented\tand\ttabs\r\n",
    "<s>Hi</s>\nthere</s> after",
    "<|begin_of_text|>x<|eot_id|>y <|start_header_id|>user<|end_header_id|>",
    "[CLS] a [SEP] b",
    "don't . ? ! , 's 've",
    "",
    " ",
    shakespeare_text(600_000)[500_000:501_500],  # past the training slice
]

BUILDERS: dict[str, Callable[[Path], Path]] = {
    "byte_level": build_byte_level_tokenizer,
    "sentencepiece": build_sentencepiece_tokenizer,
    "sentencepiece_legacy": lambda folder: build_sentencepiece_tokenizer(folder, legacy_normalizer=True),
    "wordpiece": build_wordpiece_tokenizer,
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def test_encode_equals_transformers(folder: Path) -> None:
    ours, reference = Tokenizer.from_pretrained(folder), load_reference_tokenizer(folder)
    for text in TEXTS:
        assert ours.encode(text) == reference(text)["input_ids"], text
        assert ours.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False), text


def test_decode_equals_transformers(folder: Path) -> None:
    ours, reference = Tokenizer.from_pretrained(folder), load_reference_tokenizer(folder)
    rng = random.Random(0)
    id_lists = [ours.encode(text) for text in TEXTS]
    id_lists += [[rng.randrange(len(ours)) for _ in range(rng.randrange(1, 40))] for _ in range(50)]
    for ids in id_lists:
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip), ids


def test_vocabulary_and_special_ids_equal_transformers(folder: Path) -> None:
    ours, reference = Tokenizer.from_pretrained(folder), load_reference_tokenizer(folder)
    assert ours.vocab_size == reference.vocab_size
    assert len(ours) == len(reference)
    assert ours.bos_token_id == reference.bos_token_id
    assert ours.eos_token_id == reference.eos_token_id
    assert ours.pad_token_id == reference.pad_token_id
    assert ours.all_special_tokens == reference.all_special_tokens
    assert ours.all_special_ids == reference.all_special_ids
    assert ours.special_tokens_map == reference.special_tokens_map


def test_llama3_like_special_tokens(tmp_path: Path) -> None:
    tok = Tokenizer.from_pretrained(build_byte_level_tokenizer(tmp_path))
    assert tok.bos_token_id == tok.token_to_id("<|begin_of_text|>") == len(tok) - 6
    assert tok.eos_token_ids == (tok.token_to_id("<|eot_id|>"),)
    ids = tok.encode("<|eot_id|>hi")
    assert ids[:2] == [tok.bos_token_id, tok.eos_token_id]  # bos from the post-processor; eot one token
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special_tokens=False) == "<|begin_of_text|><|eot_id|>hi"
    assert tok.clean_up_tokenization_spaces is False  # configured True, but transformers skips it for BPE


def test_sentencepiece_bos_and_byte_fallback(tmp_path: Path) -> None:
    tok = Tokenizer.from_pretrained(build_sentencepiece_tokenizer(tmp_path))
    ids = tok.encode("Hi 😀")
    assert ids[0] == tok.bos_token_id == 1
    assert [tok.id_to_token(i) for i in ids[-4:]] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert tok.decode(ids) == "Hi 😀"
    assert len(tok.byte_fallback_ids) == 256


def test_add_bos_token_in_config_is_ignored_like_transformers(tmp_path: Path) -> None:
    # transformers 5 lets tokenizer.json's post-processor decide when tokenizer.json exists.
    folder = build_sentencepiece_tokenizer(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(add_bos_token=False, add_eos_token=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, reference = Tokenizer.from_pretrained(folder), load_reference_tokenizer(folder)
    assert ours.encode("Hello") == reference("Hello")["input_ids"]
    assert ours.encode("Hello")[0] == ours.bos_token_id


def test_special_tokens_named_in_config_are_added_like_transformers(tmp_path: Path) -> None:
    folder = build_byte_level_tokenizer(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(
        pad_token={"__type": "AddedToken", "content": "<|pad|>", "lstrip": False, "normalized": False,
                   "rstrip": False, "single_word": False, "special": True},
        image_token="<|image|>",
        additional_special_tokens=["<|extra_0|>", "<|eot_id|>"],
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, reference = Tokenizer.from_pretrained(folder), load_reference_tokenizer(folder)
    text = "a<|pad|>b<|image|>c<|extra_0|>d"
    assert ours.encode(text) == reference(text)["input_ids"]
    assert len(ours) == len(reference) == 809
    assert ours.all_special_ids == reference.all_special_ids
    assert ours.pad_token_id == reference.pad_token_id == ours.token_to_id("<|pad|>")
    assert ours.decode(ours.encode(text)) == reference.decode(reference(text)["input_ids"], skip_special_tokens=True)


def test_special_tokens_map_used_without_added_tokens_decoder(tmp_path: Path) -> None:
    folder = build_sentencepiece_tokenizer(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["added_tokens_decoder"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special_map = json.loads((folder / "special_tokens_map.json").read_text())
    special_map["additional_special_tokens"] = ["<|user|>", "<|assistant|>"]
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map))
    ours, reference = Tokenizer.from_pretrained(folder), load_reference_tokenizer(folder)
    text = "<|user|>\nHi</s>\n<|assistant|>\n"
    assert ours.encode(text) == reference(text)["input_ids"]
    assert ours.token_to_id("<|user|>") in ours.encode(text)
    assert ours.all_special_ids == reference.all_special_ids


@pytest.mark.parametrize("model_type", [None, "llama", "mistral"])
def test_legacy_sentencepiece_follows_transformers_class_choice(tmp_path: Path, model_type: str | None) -> None:
    # LlamaTokenizer rebuilds the pipeline (Metaspace, "▁" only at the very start); Mistral loads the file.
    folder = build_sentencepiece_tokenizer(tmp_path, legacy_normalizer=True)
    if model_type is not None:
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    ours, reference = Tokenizer.from_pretrained(folder), load_reference_tokenizer(folder)
    for text in ("Hi</s>\nthere", " leading", "<s>x"):
        assert ours.encode(text) == reference(text)["input_ids"], text
        expected = reference.decode(reference(text)["input_ids"], skip_special_tokens=True)
        assert ours.decode(ours.encode(text)) == expected


def test_missing_tokenizer_json_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_invalid_tokenizer_json_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_invalid_tokenizer_config_is_a_checkpoint_error(tmp_path: Path) -> None:
    folder = build_byte_level_tokenizer(tmp_path)
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer_config.json"):
        Tokenizer.from_pretrained(folder)


def test_tokenizer_json_alone_is_enough(tmp_path: Path) -> None:
    folder = build_byte_level_tokenizer(tmp_path)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (folder / name).unlink()
    tok = Tokenizer.from_pretrained(folder)
    assert tok.bos_token_id is None and tok.all_special_ids == []
    assert tok.encode("hi") == load_reference_tokenizer(folder)("hi")["input_ids"]
    assert not tok.has_chat_template
