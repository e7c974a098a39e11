"""The shipped @cf/edgewise/tiny-shakespeare checkpoint: loads in our engine, matches transformers, has learnt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from gpu_backend import LLM, SamplingParams
from gpu_backend.builtin_models import BUILTIN_MODELS, builtin_model_path
from gpu_backend.tokenizer import Tokenizer

NAME = "@cf/edgewise/tiny-shakespeare"
FOLDER = builtin_model_path(NAME)
# Text from the validation tenth of the corpus, never trained on.
HELDOUT_PATH = Path(__file__).parents[1] / "data" / "tinyshakespeare-heldout.txt"
# The shipped weights score 3.28 nats/token on this slice (3.84 on the whole validation tenth, README.md);
# an untrained model scores ln 2048 = 7.6 and the train split's unigram distribution 6.05.
MAX_HELDOUT_LOSS = 3.6
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def llm() -> LLM:
    torch.set_num_threads(2)
    return LLM(str(FOLDER), device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(FOLDER, dtype=torch.float32).eval()


def test_registry_resolves_the_name() -> None:
    assert BUILTIN_MODELS[NAME] == FOLDER
    assert (FOLDER / "model.safetensors").is_file()
    assert (FOLDER / "model.safetensors").stat().st_size < 6 * 2**20


def test_registry_rejects_an_unknown_name() -> None:
    with pytest.raises(KeyError, match="no built-in model named '@cf/edgewise/nope'.*tiny-shakespeare"):
        builtin_model_path("@cf/edgewise/nope")


def test_greedy_generation_matches_transformers(llm: LLM, hf_model) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    output = llm.generate("ROMEO:", params)[0]
    prompt = output.prompt_token_ids
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert output.outputs[0].token_ids == expected
    assert output.outputs[0].text == llm.tokenizer.decode(expected)


def test_writes_play_text(llm: LLM) -> None:
    params = SamplingParams(temperature=0.8, seed=0, max_tokens=96, ignore_eos=True)
    text = llm.generate("ROMEO:", params)[0].outputs[0].text
    speakers = [line for line in text.splitlines() if re.fullmatch(r"[A-Z][A-Za-z ]*:", line)]
    assert len(speakers) >= 2 and text.count("\n") >= 8, text


def test_heldout_loss_is_low(hf_model) -> None:
    tokenizer = Tokenizer.from_pretrained(FOLDER)
    ids = torch.tensor(tokenizer.encode(HELDOUT_PATH.read_text(encoding="utf-8")))
    context = hf_model.config.max_position_embeddings
    losses = []
    with torch.no_grad():
        for window in ids.split(context):
            losses.append(hf_model(window[None], labels=window[None]).loss.item() * (len(window) - 1))
    loss = sum(losses) / (len(ids) - len(losses))
    assert loss < MAX_HELDOUT_LOSS


@pytest.mark.parametrize("text", [
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n\n",
    "naïve café — Ærø, ß, Ελληνικά, русский, 日本語, 한국어, עברית, العربية",
    "emoji 🎭👩‍👩‍👧 flags 🇬🇧, tabs\tand\r\nCRLF, NUL \x00, lone combining \u0301, spaces   end  ",
    "<|endoftext|> is special",
])
def test_tokenizer_round_trips(text: str) -> None:
    tokenizer = Tokenizer.from_pretrained(FOLDER)
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_and_chat_template() -> None:
    tokenizer = Tokenizer.from_pretrained(FOLDER)
    eos = tokenizer.token_to_id("<|endoftext|>")
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == eos
    assert tokenizer.encode("ROMEO:")[0] != eos  # no bos is added: the model never saw one
    messages = [{"role": "user", "name": "Juliet", "content": "Wherefore art thou?"}, {"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages) == "JULIET:\nWherefore art thou?\n\nUSER:\nHi\n\nASSISTANT:\n"
