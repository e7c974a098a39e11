"""Train a tiny Llama-architecture model and its byte-level BPE tokenizer on one text file.

Writes a Hugging Face checkpoint folder (config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, README.md) that our engine and transformers' `LlamaForCausalLM`
load as they load any Llama checkpoint. The model is plain torch, its parameter names are Hugging Face's,
and its rotary embedding is transformers' (rotate_half, non-interleaved), so both generate the same text.

    python -m gpu_backend.builtin_models.train_tiny_shakespeare --text input.txt --out folder --steps 2000
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .tiny_llama import TinyLlama, TrainConfig

END_OF_TEXT = "<|endoftext|>"
# Each message becomes a speaker's turn, as the play text writes them: "NAME:\n<lines>\n\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ (message['name'] if message.get('name') else message['role']) | upper }}:\n"
    "{{ message['content'] | trim }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
)


# -- tokenizer -------------------------------------------------------------------------------------


def train_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    """Byte-level BPE (as GPT-2's), so every string round-trips; <|endoftext|> is its only special token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def tokenizer_config(context_length: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


# -- training ---------------------------------------------------------------------------------------


def random_windows(tokens: torch.Tensor, config: TrainConfig, generator: torch.Generator,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(len(tokens) - config.context_length - 1, (config.batch_size,), generator=generator)
    windows = torch.stack([tokens[s:s + config.context_length + 1] for s in starts.tolist()]).to(device)
    return windows[:, :-1], windows[:, 1:]


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_learning_rate`."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (
        config.learning_rate - config.min_learning_rate)


def make_optimizer(model: TinyLlama, config: TrainConfig) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() == 2]  # norms' weights are not decayed
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": config.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))


@torch.no_grad()
def mean_loss(model: TinyLlama, tokens: torch.Tensor, config: TrainConfig, device: torch.device) -> float:
    """Mean next-token loss over `eval_batches` fixed random windows of `tokens`."""
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(config.eval_batches):
        inputs, targets = random_windows(tokens, config, generator, device)
        losses.append(F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()).item())
    return sum(losses) / len(losses)


def train(model: TinyLlama, train_tokens: torch.Tensor, val_tokens: torch.Tensor, config: TrainConfig,
          device: torch.device) -> list[dict]:
    """AdamW on random windows; returns the loss log (one entry per evaluation)."""
    optimizer = make_optimizer(model, config)
    model.train()
    generator = torch.Generator().manual_seed(config.seed)
    log, started = [], time.perf_counter()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        inputs, targets = random_windows(train_tokens, config, generator, device)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % config.eval_interval == 0 or step + 1 == config.steps:
            entry = {"step": step + 1, "train_loss": mean_loss(model, train_tokens, config, device),
                     "val_loss": mean_loss(model, val_tokens, config, device),
                     "seconds": round(time.perf_counter() - started, 1)}
            log.append(entry)
            model.train()
            print(f"step {entry['step']:5d}  train {entry['train_loss']:.4f}  val {entry['val_loss']:.4f}  "
                  f"lr {learning_rate(step, config):.2e}  {entry['seconds']:.0f}s", flush=True)
    return log


# -- checkpoint folder --------------------------------------------------------------------------------


def model_config(config: TrainConfig, eos_token_id: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": "bfloat16",
        "initializer_range": 0.02,
    }


def save_checkpoint(folder: Path, model: TinyLlama, tokenizer: Tokenizer, config: TrainConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    eos_token_id = tokenizer.token_to_id(END_OF_TEXT)
    tensors = {name: t.detach().to("cpu", torch.bfloat16).contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", tokenizer_config(config.context_length))
    _write_json(folder / "config.json", model_config(config, eos_token_id))
    _write_json(folder / "generation_config.json", {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id})


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def readme(config: TrainConfig, text_name: str, command: str, log: list[dict], final: dict, sample: str,
           num_params: int, num_train_tokens: int, num_val_tokens: int) -> str:
    table = "\n".join(f"| {e['step']} | {e['train_loss']:.4f} | {e['val_loss']:.4f} | {e['seconds']:.0f} |" for e in log)
    return f"""# tiny-shakespeare

A {num_params / 1e6:.2f}M-parameter Llama-architecture language model (`LlamaForCausalLM`: RoPE, RMSNorm,
SwiGLU, grouped-query attention, tied embeddings) with a byte-level BPE tokenizer of {config.vocab_size}
tokens, both trained from scratch on `{text_name}` by
`gpu_backend/builtin_models/train_tiny_shakespeare.py`. Served by edgewise as `@cf/edgewise/tiny-shakespeare`;
it is a toy for tests and demos: it writes play-like text (speaker names, verse line breaks, archaic words),
not sense.

## Data

Tiny Shakespeare (about 40,000 lines of Shakespeare's plays, 1.1 MB, from Andrej Karpathy's char-rnn).
The first 90% of the tokens ({num_train_tokens:,}) are for training (the tokenizer is also trained on this
part only), the last 10% ({num_val_tokens:,}) for validation.

## Training

{config.steps} steps of AdamW (betas 0.9/0.95, weight decay {config.weight_decay}, gradient clipping 1.0),
learning rate {config.learning_rate} with {config.warmup_steps} warmup steps and cosine decay to
{config.min_learning_rate}, batches of {config.batch_size} random windows of {config.context_length} tokens.
Weights are stored in bfloat16; the final losses below are of the stored (bfloat16) weights.

Final: train loss **{final['train_loss']:.4f}**, validation loss **{final['val_loss']:.4f}** (nats per token).

| step | train loss | val loss | seconds |
|---|---|---|---|
{table}

Model: `{json.dumps(asdict(config))}`

Command:

```
{command}
```

Greedy sample for `ROMEO:`:

```
{sample}
```

## License

The training text is in the public domain (Shakespeare's plays); the weights and tokenizer are released with
this project under its license.
"""


# -- CLI --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, required=True, help="UTF-8 training text")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    defaults = TrainConfig()
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train and write the folder; returns the final (bfloat16) losses."""
    args = parse_args(argv)
    config = TrainConfig(**{k: getattr(args, k) for k in asdict(TrainConfig())})
    torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed)
    device = torch.device(args.device)
    text = args.text.read_text(encoding="utf-8")
    train_text = text[: int(len(text) * 0.9)]
    tokenizer = train_tokenizer(train_text, config.vocab_size)
    tokens = torch.tensor(tokenizer.encode(text).ids, dtype=torch.long)
    split = int(len(tokens) * 0.9)
    train_tokens, val_tokens = tokens[:split], tokens[split:]
    print(f"{len(tokens):,} tokens ({len(text) / len(tokens):.2f} chars/token); "
          f"train {len(train_tokens):,}, val {len(val_tokens):,}", flush=True)
    model = TinyLlama(config).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"{num_params:,} parameters", flush=True)
    log = train(model, train_tokens, val_tokens, config, device)
    model = model.to(torch.bfloat16).float().eval()  # report the losses of the weights as stored
    final = {"train_loss": mean_loss(model, train_tokens, config, device),
             "val_loss": mean_loss(model, val_tokens, config, device)}
    print(f"final (bfloat16 weights): train {final['train_loss']:.4f}  val {final['val_loss']:.4f}", flush=True)
    prompt = tokenizer.encode("ROMEO:").ids
    sample = "ROMEO:" + tokenizer.decode(model.generate(prompt, 64))
    print(sample, flush=True)
    save_checkpoint(args.out, model, tokenizer, config)
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "gpu_backend.builtin_models.train_tiny_shakespeare", *arguments])
    (args.out / "README.md").write_text(readme(config, args.text.name, command, log, final, sample,
                                               num_params, len(train_tokens), len(val_tokens)), encoding="utf-8")
    return final


if __name__ == "__main__":
    main()
