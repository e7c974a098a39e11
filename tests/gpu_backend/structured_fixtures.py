"""Checkpoints for the JSON-mode and tool-calling tests: the tiny random Llama, ending on a special token.

The shared test checkpoints end on token 2, which the tiny tokenizer reads as "#", so every answer that
ends would end in "#" and no JSON answer would parse. Real models end on a special token that the text
leaves out; these copies end on ``<|eot_id|>`` the same way, and take ``max_positions`` positions
(rendered tools take hundreds of the tiny tokenizer's tokens).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
