"""Builders of small local Hugging Face tokenizer folders, trained on tinyshakespeare, for tests.

`build_byte_level_tokenizer(folder)` writes a Llama-3-style byte-level BPE (ByteLevel pre-tokenizer and
decoder, `<|begin_of_text|>` added by a TemplateProcessing post-processor, chat template in
chat_template.jinja); `build_sentencepiece_tokenizer(folder)` writes a Llama-2/TinyLlama-style
SentencePiece BPE (Metaspace, `<0x00>`..`<0xFF>` byte fallback, Zephyr chat template in
tokenizer_config.json); `build_wordpiece_tokenizer(folder)` a BERT-style WordPiece, for decoding with
`clean_up_tokenization_spaces`. Each writes tokenizer.json, tokenizer_config.json and
special_tokens_map.json and returns the folder. `load_reference_tokenizer(folder)` is transformers'
AutoTokenizer for a folder, offline. Nothing is downloaded. Trained tokenizers are cached per process, so calling a
builder again only writes files.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordPiece
from tokenizers.trainers import BpeTrainer, WordPieceTrainer

# The first 200,000 characters of tinyshakespeare (public domain), kept with the tests.
SHAKESPEARE_PATH = Path(__file__).parent / "data" / "tinyshakespeare-200k.txt"
TRAIN_CHARS = 200_000
VOCAB_SIZE = 800

LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]

# Llama-3.1-like: a system header with a date (strftime_now unless date_string is passed), tools as
# indented JSON, bos_token from the template variables.
LLAMA3_CHAT_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {{- "You may call these functions:\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant', 'tool'] %}
        {{- raise_exception('Unknown role: ' + message['role']) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {{- message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Zephyr/TinyLlama: relies on trim_blocks and lstrip_blocks for its layout.
ZEPHYR_CHAT_TEMPLATE = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

LLAMA2_CHAT_TEMPLATE = """{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}\
{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}\
{% set system_message = false %}{% endif %}{% for message in loop_messages %}\
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}\
{% if loop.index0 == 0 and system_message != false %}\
{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}\
{% else %}{% set content = message['content'] %}{% endif %}\
{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}\
{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"""


def shakespeare_text(num_chars: int = TRAIN_CHARS) -> str:
    """The first `num_chars` characters of tinyshakespeare (the training slice)."""
    with SHAKESPEARE_PATH.open(encoding="utf-8") as f:
        return f.read(num_chars)


def _lines(num_chars: int = TRAIN_CHARS) -> list[str]:
    return shakespeare_text(num_chars).splitlines(keepends=True)


@functools.cache
def _byte_level_json(vocab_size: int) -> str:
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(LLAMA3_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_lines(), trainer=trainer)
    # Llama 3 appends its special tokens after the BPE vocabulary.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS])
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", bos_id)],
            ),
        ]
    )
    return tok.to_str()


@functools.cache
def _sentencepiece_json(vocab_size: int, legacy_normalizer: bool) -> str:
    trainer_tok = Tokenizer(BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = BpeTrainer(vocab_size=vocab_size - 3 - 256, limit_alphabet=80, show_progress=False)
    trainer_tok.train_from_iterator(_lines(), trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    # SentencePiece layout: <unk>, <s>, </s>, the 256 byte pieces, then the learned pieces.
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    learned_pieces = sorted(learned["vocab"], key=learned["vocab"].get)
    pieces += [p for p in learned_pieces if p not in set(pieces)]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if legacy_normalizer:
        # TinyLlama's tokenizer.json as converted by older transformers: the space handling lives in
        # the normalizer, which prepends "▁" after every special token too.
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok.to_str()


@functools.cache
def _wordpiece_json() -> str:
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    trainer = WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
                               show_progress=False)
    tok.train_from_iterator(_lines(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok.to_str()


def load_reference_tokenizer(folder: str | Path):  # -> transformers.PreTrainedTokenizerBase
    """transformers' AutoTokenizer for `folder`, offline; the test is skipped where transformers is missing."""
    import pytest

    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _added_tokens_decoder(tokenizer_json: str) -> dict[str, dict]:
    return {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in json.loads(tokenizer_json)["added_tokens"]
    }


def _write(folder: Path, tokenizer_json: str, config: dict, special_tokens_map: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens_map, indent=2), encoding="utf-8")
    return folder


def build_byte_level_tokenizer(folder: str | Path, vocab_size: int = VOCAB_SIZE + 6) -> Path:
    """Write a Llama-3-style byte-level BPE tokenizer folder; the chat template is chat_template.jinja.

    `vocab_size` counts every token, the 6 special ones (last) included; at least 262.
    """
    folder = Path(folder)
    tokenizer_json = _byte_level_json(vocab_size)
    config = {
        "added_tokens_decoder": _added_tokens_decoder(tokenizer_json),
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "clean_up_tokenization_spaces": True,  # as Llama 3 ships it; transformers ignores it for BPE
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    special_tokens_map = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    _write(folder, tokenizer_json, config, special_tokens_map)
    (folder / "chat_template.jinja").write_text(LLAMA3_CHAT_TEMPLATE, encoding="utf-8")
    return folder


def build_wordpiece_tokenizer(folder: str | Path) -> Path:
    """Write a BERT-style WordPiece tokenizer folder with `clean_up_tokenization_spaces` on (no chat template).

    Not an LLM tokenizer: it is the kind for which transformers applies the space cleanup on decode.
    """
    folder = Path(folder)
    config = {
        "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
        "clean_up_tokenization_spaces": True, "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return _write(folder, _wordpiece_json(), config, {})


def build_sentencepiece_tokenizer(folder: str | Path, legacy_normalizer: bool = False,
                                  vocab_size: int = VOCAB_SIZE + 259) -> Path:
    """Write a TinyLlama-style SentencePiece BPE tokenizer folder (Zephyr template, Llama-2 as a named one).

    `vocab_size` counts every token: <unk>, <s>, </s>, 256 byte pieces, then learned pieces (at least 80).
    `legacy_normalizer=True` writes the older tokenizer.json layout (Prepend + Replace normalizer, no
    pre-tokenizer) that transformers' LlamaTokenizer rebuilds as a Metaspace pre-tokenizer.
    """
    folder = Path(folder)
    tokenizer_json = _sentencepiece_json(vocab_size, legacy_normalizer)
    special = {"content": "", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": _added_tokens_decoder(tokenizer_json),
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "chat_template": [
            {"name": "default", "template": ZEPHYR_CHAT_TEMPLATE},
            {"name": "llama2", "template": LLAMA2_CHAT_TEMPLATE},
        ],
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 2048,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "use_default_system_prompt": False,
    }
    named = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
    special_tokens_map = {name: {**special, "content": content} for name, content in named.items()}
    return _write(folder, tokenizer_json, config, special_tokens_map)
