"""Texts -> unit-length sentence vectors with a BERT checkpoint, as sentence-transformers computes them.

sentence-transformers runs Transformer -> Pooling (mean over real tokens) -> Normalize for
all-MiniLM-L6-v2 (modules.json, 1_Pooling/config.json); `Embedder.embed` does the same, with the
tokenizer truncating at the checkpoint's ``max_seq_length`` and padding each batch to its longest text.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
import torch.nn.functional as F

from ..config import DTYPES
from ..errors import CheckpointError, InvalidRequestError, RequestAbortedError
from ..models.bert import BertModel

POOLINGS = ("mean", "cls")
# Texts per forward pass: bounds the activations of one call, whatever the request's size.
MAX_BATCH_SIZE = 32


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]  # one unit-length vector per text, in request order
    num_tokens: int  # tokens of all texts after truncation, [CLS] and [SEP] included (usage accounting)


class Embedder:
    """One embeddings model on one device; `embed` may be called from several threads at once."""

    def __init__(self, folder: str | Path, device: str = "cpu", dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.model = BertModel.from_pretrained(self.folder, dtype=DTYPES[dtype], device=self.device)
        self.max_seq_len = max_seq_len(self.folder, self.model.config.max_position_embeddings)
        self.tokenizer = _load_tokenizer(self.folder, self.max_seq_len)
        self._lock = threading.Lock()  # one forward at a time; the tokenizer's settings are shared state

    @property
    def dimensions(self) -> int:
        return self.model.config.hidden_size

    def embed(self, texts: list[str], pooling: str = "mean",
              cancelled: threading.Event | None = None) -> EmbeddingResult:
        """``cancelled``: once set, the call stops before its next batch with RequestAbortedError."""
        _validate(texts, pooling)
        vectors: list[list[float]] = []
        num_tokens = 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), MAX_BATCH_SIZE):
                if cancelled is not None and cancelled.is_set():
                    raise RequestAbortedError(f"embedding cancelled after {start} of {len(texts)} texts")
                batch, batch_tokens = self._embed_batch(texts[start:start + MAX_BATCH_SIZE], pooling)
                vectors.extend(batch.tolist())
                num_tokens += batch_tokens
        return EmbeddingResult(vectors, num_tokens)

    def _embed_batch(self, texts: list[str], pooling: str) -> tuple[torch.Tensor, int]:
        encodings = self.tokenizer.encode_batch(texts)
        input_ids = self._tensor([e.ids for e in encodings])
        attention_mask = self._tensor([e.attention_mask for e in encodings])
        hidden = self.model(input_ids, attention_mask, self._tensor([e.type_ids for e in encodings]))
        pooled = pool(hidden.float(), attention_mask, pooling)
        return F.normalize(pooled, p=2, dim=-1).cpu(), int(attention_mask.sum())

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[batch, seq_len, hidden] -> [batch, hidden]: the mean over real tokens, or the [CLS] token's state."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def is_embedding_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a BERT encoder, which is served as an embeddings model."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    return "BertModel" in (config.get("architectures") or []) or config.get("model_type") == "bert"


def max_seq_len(folder: Path, max_position_embeddings: int) -> int:
    """sentence-transformers' ``max_seq_length`` (sentence_bert_config.json) if set, else the positions' count."""
    limit = _read_optional_json(folder / "sentence_bert_config.json").get("max_seq_length")
    return min(int(limit), max_position_embeddings) if limit else max_position_embeddings


def _load_tokenizer(folder: Path, max_length: int) -> tokenizers.Tokenizer:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no tokenizer.json, which embeddings models need")
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    # tokenizer.json may carry the settings it was saved with (all-MiniLM-L6-v2's: pad everything to 128).
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    pad_token = _read_optional_json(folder / "tokenizer_config.json").get("pad_token") or "[PAD]"
    if isinstance(pad_token, dict):  # saved as an AddedToken
        pad_token = str(pad_token.get("content", "[PAD]"))
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise CheckpointError(f"{path}: the padding token {pad_token!r} is not in the vocabulary")
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def _read_optional_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    return data if isinstance(data, dict) else {}


def _validate(texts: list[str], pooling: str) -> None:
    if pooling not in POOLINGS:
        raise InvalidRequestError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    if not isinstance(texts, list) or not texts:
        raise InvalidRequestError("texts must be a non-empty list of strings")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise InvalidRequestError(f"texts[{index}] must be a non-empty string")
