"""Checkpoints for the JSON-mode and tool-calling tests: the tiny random Llama, ending on a special token.

The shared test checkpoints end on token 2, which the tiny tokenizer reads as "#", so every answer that
ends would end in "#" and no JSON answer would parse. Real models end on a special token that the text
leaves out; these copies end on ``<|eot_id|>`` the same way, and take ``max_positions`` positions
(rendered tools take hundreds of the tiny tokenizer's tokens).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
import random
import shutil
from pathlib import Path
from typing import Any

from backend_fixtures import MODEL, Backend, served_backend
from gpu_backend.tokenizer import Tokenizer

END_TOKEN = "<|eot_id|>"


def special_eos_copy(source: Path, folder: Path, max_positions: int = 2048, chat_template: str | None = None) -> Path:
    shutil.copytree(source, folder)
    eos = Tokenizer.from_pretrained(folder).token_to_id(END_TOKEN)
    assert eos is not None, f"the test tokenizer has no {END_TOKEN}"
    _update(folder / "config.json", eos_token_id=eos, max_position_embeddings=max_positions)
    _update(folder / "generation_config.json", eos_token_id=eos)
    if chat_template is not None:
        (folder / "chat_template.jinja").write_text(chat_template)
    return folder


def _update(path: Path, **values: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def random_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """Nested objects, arrays, enums, bounded integers, short strings, required and optional fields."""
    leaves = [lambda: {"type": "boolean"}, lambda: {"enum": rng.sample(["red", "green", "blue", 7, None], 3)},
              lambda: {"type": "integer", "minimum": -(low := rng.randint(0, 20)), "maximum": low + rng.randint(0, 50)},
              lambda: {"type": "string", "maxLength": rng.randint(1, 4)}]
    kinds = ["leaf", "leaf", "array"] + (["object"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "array":
        return {"type": "array", "items": rng.choice(leaves)(), "maxItems": rng.randint(0, 2)}
    if kind == "leaf" and depth > 0:
        return rng.choice(leaves)()
    names = rng.sample(["a", "b", "c", "d"], rng.randint(1, 3))
    return {"type": "object", "properties": {name: random_schema(rng, depth + 1) for name in names},
            "required": rng.sample(names, rng.randint(0, len(names))), "additionalProperties": False}


@contextmanager
def special_eos_backend(source: Path, folder: Path) -> Iterator[Backend]:
    """A backend serving, as MODEL, a copy of ``source`` that ends on a special token, with room for
    rendered tools and long conversations (1,024 positions)."""
    with served_backend({MODEL: special_eos_copy(source, folder, 1024)}, device="cpu", dtype="float32",
                        num_kv_blocks=128, max_model_len=1024) as backend:
        yield backend
