"""The training script end to end on a tiny text: the folder it writes loads in our engine and in transformers."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpu_backend import LLM, SamplingParams
from gpu_backend.builtin_models.tiny_llama import TinyLlama, TrainConfig
from gpu_backend.builtin_models.train_tiny_shakespeare import main

SHAKESPEARE_PATH = Path(__file__).parents[1] / "data" / "tinyshakespeare-200k.txt"
TINY = ["--vocab-size", "300", "--hidden-size", "32", "--intermediate-size", "64", "--num-hidden-layers", "2",
        "--num-attention-heads", "4", "--num-key-value-heads", "2", "--context-length", "32", "--batch-size", "4",
        "--steps", "6", "--warmup-steps", "2", "--eval-interval", "3", "--eval-batches", "1"]


def test_training_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "plays.txt"
    text.write_text(SHAKESPEARE_PATH.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    out = tmp_path / "model"
    final = main(["--text", str(text), "--out", str(out), *TINY])
    assert final["val_loss"] < 6.0  # below ln(300) = 5.70 plus noise: it learnt something in 6 steps

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert "| 6 |" in (out / "README.md").read_text()
    llm = LLM(str(out), device="cpu", dtype="float32", progress=False)
    output = llm.generate("ROMEO:", SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))[0]

    from transformers import LlamaForCausalLM

    hf_model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([output.prompt_token_ids + output.outputs[0].token_ids])
    with torch.no_grad():
        greedy = hf_model(ids).logits[0, len(output.prompt_token_ids) - 1:-1].argmax(-1).tolist()
    assert output.outputs[0].token_ids == greedy


def test_plain_torch_model_equals_transformers_llama() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from gpu_backend.builtin_models.train_tiny_shakespeare import model_config

    config = TrainConfig(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, context_length=40, dropout=0.0)
    torch.manual_seed(0)
    ours = TinyLlama(config).eval()
    with torch.no_grad():  # norms away from 1 so a misplaced weight shows
        for name, param in ours.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    hf_model = LlamaForCausalLM(LlamaConfig(**model_config(config, eos_token_id=0))).eval()
    missing, unexpected = hf_model.load_state_dict(ours.state_dict(), strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []  # tied to embed_tokens
    ids = torch.randint(0, config.vocab_size, (2, 37))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf_model(ids).logits, atol=1e-5, rtol=1e-5)
