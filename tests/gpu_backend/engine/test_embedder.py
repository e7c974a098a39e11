"""Embedder on the shipped all-MiniLM-L6-v2: equal to transformers + mean pooling and to sentence-transformers."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.engine import embedder as embedder_module
from gpu_backend.engine.embedder import Embedder, EmbeddingResult, is_embedding_checkpoint
from gpu_backend.errors import InvalidRequestError

FOLDER = builtin_model_path("@cf/sentence-transformers/all-minilm-l6-v2")
MAX_SEQ_LEN = 256  # sentence_bert_config.json
TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
         "The new movie is awesome.", "Hi"]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    torch.set_num_threads(2)
    return Embedder(FOLDER)


@pytest.fixture(scope="module")
def hf_reference():
    """Hidden states and attention mask of transformers' AutoModel for a list of texts."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(FOLDER, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(FOLDER)

    def run(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ_LEN, return_tensors="pt")
        with torch.inference_mode():
            return model(**batch).last_hidden_state, batch["attention_mask"]

    return run


def _vectors(result: EmbeddingResult) -> torch.Tensor:
    return torch.tensor(result.vectors)


def test_mean_pooling_matches_transformers(embedder: Embedder, hf_reference) -> None:
    hidden, mask = hf_reference(TEXTS)
    assert not mask.all()  # texts of different lengths: padding is exercised
    weights = mask.unsqueeze(-1).float()
    expected = F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    result = embedder.embed(TEXTS)
    assert (_vectors(result) - expected).abs().max() < 1e-5
    assert result.num_tokens == int(mask.sum())


def test_cls_pooling_takes_the_first_token(embedder: Embedder, hf_reference) -> None:
    hidden, _ = hf_reference(TEXTS)
    result = embedder.embed(TEXTS, pooling="cls")
    assert (_vectors(result) - F.normalize(hidden[:, 0], dim=-1)).abs().max() < 1e-5
    assert (_vectors(result) - _vectors(embedder.embed(TEXTS))).abs().max() > 1e-2


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_vectors_are_384_wide_and_unit_length(embedder: Embedder, pooling: str) -> None:
    vectors = embedder.embed(TEXTS, pooling=pooling).vectors
    assert embedder.dimensions == 384
    assert len(vectors) == len(TEXTS)
    for vector in vectors:
        assert len(vector) == 384
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, abs_tol=1e-5)


def test_related_sentences_are_closer(embedder: Embedder) -> None:
    eating, bread, horse, movie, _ = _vectors(embedder.embed(TEXTS))
    assert eating @ bread > 0.6  # 0.755 with the published weights
    assert eating @ bread > (eating @ horse) + 0.3
    assert eating @ movie < 0.2
    assert bread @ movie < 0.2


def test_matches_sentence_transformers(embedder: Embedder) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        sentence_transformers = pytest.importorskip("sentence_transformers")
        model = sentence_transformers.SentenceTransformer(str(FOLDER), device="cpu")
        expected = torch.from_numpy(model.encode(TEXTS, normalize_embeddings=True))
    assert (_vectors(embedder.embed(TEXTS)) - expected).abs().max() < 1e-5


def test_num_tokens_counts_special_tokens(embedder: Embedder) -> None:
    assert embedder.embed(["Hi"]).num_tokens == 3  # [CLS] hi [SEP]
    assert embedder.embed(["Hi", "Hi there"]).num_tokens == 3 + 4  # padding is not counted


def test_long_texts_are_truncated_to_max_seq_length(embedder: Embedder, hf_reference) -> None:
    text = "word " * 1000
    hidden, _ = hf_reference([text])
    result = embedder.embed([text])
    assert result.num_tokens == MAX_SEQ_LEN == embedder.max_seq_len
    assert (_vectors(result)[0] - F.normalize(hidden[0].mean(0), dim=-1)).abs().max() < 1e-5


def test_batching_does_not_change_vectors(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = embedder.embed(TEXTS)
    monkeypatch.setattr(embedder_module, "MAX_BATCH_SIZE", 2)
    split = embedder.embed(TEXTS)
    assert (_vectors(split) - _vectors(whole)).abs().max() < 1e-5
    assert split.num_tokens == whole.num_tokens


async def test_concurrent_calls_from_threads_agree(embedder: Embedder) -> None:
    expected = [embedder.embed([text]).vectors[0] for text in TEXTS]
    results = await asyncio.gather(*(asyncio.to_thread(embedder.embed, [text]) for text in TEXTS * 2))
    for text_index, result in enumerate(results):
        got = torch.tensor(result.vectors[0])
        assert (got - torch.tensor(expected[text_index % len(TEXTS)])).abs().max() < 1e-5


@pytest.mark.parametrize(("texts", "pooling", "message"), [
    ([], "mean", "non-empty list"),
    (["fine", ""], "mean", r"texts\[1\] must be a non-empty string"),
    (["fine"], "max", "pooling must be one of mean, cls"),
])
def test_rejects_invalid_requests(embedder: Embedder, texts: list[str], pooling: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        embedder.embed(texts, pooling=pooling)


def test_is_embedding_checkpoint(tmp_path: Path) -> None:
    assert is_embedding_checkpoint(FOLDER)
    assert not is_embedding_checkpoint(builtin_model_path("@cf/edgewise/tiny-shakespeare"))
    assert not is_embedding_checkpoint(tmp_path)  # no config.json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    assert is_embedding_checkpoint(tmp_path)


def test_rejects_an_unknown_dtype() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        Embedder(FOLDER, dtype="float8")
