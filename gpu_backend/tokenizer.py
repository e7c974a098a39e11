"""Text <-> token ids for a Hugging Face checkpoint folder, equal to transformers' `AutoTokenizer`.

`Tokenizer.from_pretrained(folder)` loads tokenizer.json with the `tokenizers` library and applies what
transformers (5.x) does on load: the special tokens named in tokenizer_config.json /
special_tokens_map.json are added, `add_bos_token`/`add_eos_token` are ignored because tokenizer.json's
post-processor decides, `clean_up_tokenization_spaces` is honoured for non-BPE models only, and a
SentencePiece tokenizer declared as `LlamaTokenizer` gets the pipeline transformers rebuilds for it.
Chat templates live in chat_template.py; streaming detokenisation in detokenizer.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from .chat_template import load_chat_templates, render_chat_template, select_template
from .detokenizer import IncrementalDetokenizer, clean_up_tokenization
from .errors import CheckpointError, InvalidRequestError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
MODEL_CONFIG_FILE = "config.json"
# transformers' named special tokens, in the order `all_special_ids` lists them.
SPECIAL_TOKEN_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_ADDED_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
_LLAMA_TOKENIZER_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")
_LLAMA_CLASS_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# Model types (config.json) whose tokenizer.json transformers loads as is even when LlamaTokenizer is named.
_VERBATIM_MODEL_TYPES = frozenset({"mistral", "mixtral", "ministral", "phi3", "phimoe"})


class Tokenizer:
    """A checkpoint's tokenizer: `encode`, `decode`, `apply_chat_template`, and its special tokens."""

    def __init__(self, backend: tokenizers.Tokenizer, *, special_tokens: Mapping[str, str],
                 extra_special_tokens: Sequence[str] = (), chat_templates: Mapping[str, str] | None = None,
                 clean_up_tokenization_spaces: bool = False, name: str = "model") -> None:
        self.backend = backend
        self.name = name
        self.special_tokens_map = dict(special_tokens)  # attribute -> token text, as templates see them
        self.extra_special_tokens = tuple(extra_special_tokens)
        self.chat_templates = dict(chat_templates or {})
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        added = backend.get_added_tokens_decoder()
        # Exactly the ids `decode(..., skip_special_tokens=True)` drops.
        self.skipped_special_ids = frozenset(i for i, t in added.items() if t.special)
        # SentencePiece byte pieces <0x00>..<0xFF>, which a ByteFallback decoder turns into bytes.
        decoder_state = backend.decoder.__getstate__() if backend.decoder is not None else b""
        has_byte_fallback = b'"ByteFallback"' in decoder_state
        byte_ids = [backend.token_to_id(f"<0x{b:02X}>") for b in range(256)] if has_byte_fallback else []
        self.byte_fallback_ids = frozenset(i for i in byte_ids if i is not None)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Tokenizer:
        """Load tokenizer.json (+ tokenizer_config.json, special_tokens_map.json, chat templates) from `folder`."""
        folder = Path(folder)
        tokenizer_json = _read_text(folder / TOKENIZER_FILE)
        backend = _load_backend(tokenizer_json, folder / TOKENIZER_FILE)
        config = _read_json(folder / TOKENIZER_CONFIG_FILE)
        _merge_special_tokens_map(config, folder / SPECIAL_TOKENS_MAP_FILE)
        if _is_rebuilt_as_llama(config, tokenizer_json, backend, folder):
            _use_llama_pipeline(backend, config)
        special, extra = _special_tokens(config)
        _add_special_tokens(backend, config, special, extra)
        if config.get("split_special_tokens"):
            backend.encode_special_tokens = True
        cleanup = bool(config.get("clean_up_tokenization_spaces", False)) and (
            not isinstance(backend.model, models.BPE)  # transformers skips it for BPE
            or bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"))
        )
        return cls(backend, special_tokens=special, extra_special_tokens=extra,
                   chat_templates=load_chat_templates(folder, config), clean_up_tokenization_spaces=cleanup,
                   name=folder.name)

    # -- text <-> ids --------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens` the post-processor adds e.g. the bos token."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `token_ids`, as transformers' `decode` (cleanup of tokenization spaces included)."""
        text = self.backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    # -- chat ----------------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            tools: Sequence[Mapping[str, Any]] | None = None, *, tokenize: bool = False,
                            **kwargs: Any) -> str | list[int]:
        """The prompt transformers' `apply_chat_template` renders; with `tokenize=True` its token ids.

        Extra keyword arguments become template variables (`documents`, `date_string`, `enable_thinking`...).
        The rendered text already holds the template's special tokens, so it is encoded without adding more.
        """
        source = select_template(self.chat_templates, tools is not None)
        if source is None:
            raise InvalidRequestError(f"model {self.name} has no chat template; send a prompt instead")
        text = render_chat_template(source, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                    special_tokens=self.special_tokens_map, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    @property
    def has_chat_template(self) -> bool:
        return select_template(self.chat_templates, has_tools=False) is not None

    # -- vocabulary ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens (transformers' `vocab_size`)."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size of the vocabulary with added tokens (transformers' `len(tokenizer)`)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The tokenizer's eos as a tuple (generation_config.json may name more; config.py reads those)."""
        return () if self.eos_token_id is None else (self.eos_token_id,)

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def all_special_tokens(self) -> list[str]:
        """Named special tokens, then extra ones, without repeats (transformers' order)."""
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self.extra_special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        return [i for i in map(self.backend.token_to_id, self.all_special_tokens) if i is not None]

    def _special_id(self, attribute: str) -> int | None:
        token = self.special_tokens_map.get(attribute)
        return None if token is None else self.backend.token_to_id(token)


# -- loading -----------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the engine needs the fast tokenizer's {path.name}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from exc


def _load_backend(tokenizer_json: str, path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_str(tokenizer_json)
    except Exception as exc:  # the Rust loader raises a bare Exception
        raise CheckpointError(f"{path} is not a valid tokenizers file: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    """An optional JSON object file; {} when absent."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _merge_special_tokens_map(config: dict[str, Any], path: Path) -> None:
    # transformers reads the legacy special_tokens_map.json only when the config has no added_tokens_decoder.
    if "added_tokens_decoder" in config or not path.is_file():
        return
    for key, value in _read_json(path).items():
        if key in ("additional_special_tokens", "extra_special_tokens") and isinstance(value, list):
            existing = list(config.get("extra_special_tokens") or config.get("additional_special_tokens") or [])
            config["extra_special_tokens"] = existing + [t for t in value if t not in existing]
        else:
            config[key] = value


def _token_text(value: Any) -> str | None:
    """A token given as a string or as a serialised AddedToken ({"content": ...})."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _special_tokens(config: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Named special tokens (standard ones, then model-specific `*_token` keys) and the extra ones."""
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    named_extra = extra if isinstance(extra, Mapping) else {}
    model_specific = [(k, v) for k, v in config.items() if k.endswith("_token") and k not in SPECIAL_TOKEN_ATTRIBUTES]
    special = {k: t for k in SPECIAL_TOKEN_ATTRIBUTES if (t := _token_text(config.get(k))) is not None}
    special |= {k: t for k, v in [*model_specific, *named_extra.items()] if (t := _token_text(v)) is not None}
    extra_list = [] if named_extra else [t for t in map(_token_text, extra) if t is not None]
    return special, extra_list


def _add_special_tokens(backend: tokenizers.Tokenizer, config: Mapping[str, Any], special: Mapping[str, str],
                        extra: Sequence[str]) -> None:
    """Add what transformers adds on load: config-declared added tokens and named/extra special tokens."""
    existing = backend.get_added_tokens_decoder().values()
    existing_flags = {_flags(t) for t in existing}
    to_add: list[AddedToken] = []
    for _, entry in sorted(((int(i), e) for i, e in (config.get("added_tokens_decoder") or {}).items())):
        token = AddedToken(**{k: v for k, v in entry.items() if k in _ADDED_TOKEN_FIELDS})
        if _flags(token) not in existing_flags:
            to_add.append(token)
    known = {t.content for t in existing} | {t.content for t in to_add}
    for content in [*special.values(), *extra]:
        if content not in known:
            to_add.append(AddedToken(content, special=True, normalized=False))
            known.add(content)
    if to_add:
        backend.add_tokens(to_add)


def _flags(token: AddedToken) -> tuple[Any, ...]:
    return (token.content, token.lstrip, token.rstrip, token.single_word, token.normalized, token.special)


def _is_rebuilt_as_llama(config: Mapping[str, Any], tokenizer_json: str, backend: tokenizers.Tokenizer,
                         folder: Path) -> bool:
    """Whether transformers' AutoTokenizer would load this folder with `LlamaTokenizer`'s own pipeline.

    It does for a config naming LlamaTokenizer unless tokenizer.json is byte-level (then it loads the file
    as is) or config.json names a model type it maps to the generic backend (Mistral, Phi-3...).
    """
    if config.get("tokenizer_class") not in _LLAMA_TOKENIZER_CLASSES or not isinstance(backend.model, models.BPE):
        return False
    if '"ByteLevel"' in tokenizer_json:  # transformers' own test, on the file's text
        return False
    return _read_json(folder / MODEL_CONFIG_FILE).get("model_type") not in _VERBATIM_MODEL_TYPES


def _use_llama_pipeline(backend: tokenizers.Tokenizer, config: dict[str, Any]) -> None:
    """Swap in transformers' LlamaTokenizer normaliser, pre-tokeniser and decoder (and its default tokens).

    transformers 5 replaces the file's pipeline: no normaliser, a Metaspace pre-tokeniser that does
    not split and prepends "▁" only at the start of the text unless `legacy` is true (older
    tokenizer.json files prepend it after every special token too), and a decoder that strips the
    prepended space.
    """
    for key, default in _LLAMA_CLASS_DEFAULTS.items():
        config.setdefault(key, default)
    add_prefix_space = config.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
    scheme = ("always" if config.get("legacy", False) else "first") if add_prefix_space else "never"
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)


__all__ = ["IncrementalDetokenizer", "Tokenizer"]  # the detokenizer is re-exported: the engine imports both from here
