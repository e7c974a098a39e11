"""The BERT encoder against transformers' BertModel: the shipped all-MiniLM-L6-v2 and a tiny random BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.errors import CheckpointError, UnsupportedArchitectureError
from gpu_backend.models.bert import BertConfig, BertModel, param_name

FOLDER = builtin_model_path("@cf/sentence-transformers/all-minilm-l6-v2")
TEXTS = ["A man is eating food.", "Hi", "The quick brown fox jumps over the lazy dog, twice, before breakfast."]


@pytest.fixture(scope="module")
def model() -> BertModel:
    torch.set_num_threads(2)
    return BertModel.from_pretrained(FOLDER)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModel

    return AutoModel.from_pretrained(FOLDER, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(FOLDER)(TEXTS, padding=True, return_tensors="pt"))


def test_config_reads_the_checkpoint() -> None:
    config = BertConfig.from_pretrained(FOLDER)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 6, 12)
    assert (config.head_dim, config.intermediate_size, config.vocab_size) == (32, 1536, 30522)
    assert config.layer_norm_eps == 1e-12


def test_hidden_states_match_transformers_on_a_padded_batch(model: BertModel, hf_model, batch) -> None:
    assert not batch["attention_mask"].all()  # padding is exercised
    with torch.inference_mode():
        ours = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        expected = hf_model(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    assert ours.shape == expected.shape == (3, batch["input_ids"].shape[1], 384)
    assert (ours[real] - expected[real]).abs().max() < 1e-5


def test_token_type_ids_are_used(model: BertModel, hf_model, batch) -> None:
    token_type_ids = torch.ones_like(batch["input_ids"])
    with torch.inference_mode():
        ours = model(batch["input_ids"], batch["attention_mask"], token_type_ids)
        expected = hf_model(**{**batch, "token_type_ids": token_type_ids}).last_hidden_state
        zeros = model(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert (ours[real] - expected[real]).abs().max() < 1e-5
    assert (ours - zeros).abs().max() > 1e-2


def test_padding_does_not_change_a_texts_states(model: BertModel, batch) -> None:
    length = int(batch["attention_mask"][1].sum())
    with torch.inference_mode():
        alone = model(batch["input_ids"][1:2, :length], batch["attention_mask"][1:2, :length])
        padded = model(batch["input_ids"], batch["attention_mask"])[1, :length]
    assert (alone[0] - padded).abs().max() < 1e-5


@pytest.mark.parametrize(("checkpoint", "ours"), [
    ("encoder.layer.3.attention.self.query.weight", "layers.3.query.weight"),
    ("bert.encoder.layer.0.attention.output.dense.bias", "layers.0.attention_out.bias"),
    ("encoder.layer.5.attention.output.LayerNorm.weight", "layers.5.attention_norm.weight"),
    ("encoder.layer.1.intermediate.dense.weight", "layers.1.mlp_in.weight"),
    ("encoder.layer.1.output.dense.weight", "layers.1.mlp_out.weight"),
    ("bert.encoder.layer.11.output.LayerNorm.gamma", "layers.11.mlp_norm.weight"),
    ("embeddings.LayerNorm.beta", "embeddings.norm.bias"),
    ("bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
    ("embeddings.position_ids", None),
    ("pooler.dense.weight", None),
    ("cls.predictions.transform.dense.weight", None),
])
def test_param_name_maps_checkpoint_names(checkpoint: str, ours: str | None) -> None:
    assert param_name(checkpoint) == ours


def _tiny_bert_config():
    from transformers import BertConfig as HFBertConfig

    return HFBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)


def test_loads_a_prefixed_masked_lm_checkpoint(tmp_path: Path) -> None:
    """BertForMaskedLM saves ``bert.``-prefixed names next to its ``cls.`` head; the encoder takes the former."""
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    hf = BertForMaskedLM(_tiny_bert_config()).eval()
    hf.save_pretrained(tmp_path)
    input_ids = torch.randint(0, 99, (2, 9))
    attention_mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    with torch.inference_mode():
        expected = hf.bert(input_ids, attention_mask=attention_mask).last_hidden_state
        ours = BertModel.from_pretrained(tmp_path)(input_ids, attention_mask)
    real = attention_mask.bool()
    assert (ours[real] - expected[real]).abs().max() < 1e-5


def test_rejects_a_decoder_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(UnsupportedArchitectureError, match="not a BERT encoder"):
        BertConfig.from_pretrained(tmp_path)


def test_missing_weights_fail_loudly(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from transformers import BertModel as HFBertModel

    hf = HFBertModel(_tiny_bert_config())
    hf.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if "layer.1.output.dense" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"layers\.1\.mlp_out\.weight"):
        BertModel.from_pretrained(tmp_path)
