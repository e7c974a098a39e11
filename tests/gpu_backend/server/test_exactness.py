"""The exactness matrix: what a client gets does not depend on how the model is served.

Layouts: one process, TP=2, PP=2 and prefill/decode (one instance each), over Gloo on CPU.
Tokenizers: byte-level BPE (Llama 3) and SentencePiece with a Metaspace pre-tokenizer (Llama 2,
Mistral, TinyLlama), which drops the first generated token's leading space and keeps the others'.
Each prompt's second generated token starts with a space (checked): the bug this matrix was written
for made prefill/decode answer "YMy" for "Y My" (the decode instance decoded the second token as if
it were the first) and never stop at a stop string spanning the first token, which the prefill
instance samples, and the second.

One engine per layout x tokenizer, started once (``Runs``), serves:
- ``/v1/completions``, streamed and not, without a stop string, with one spanning the first and
  second generated tokens (the hand-off) and with one in the middle: the text, the streamed pieces,
  finish_reason and usage equal one process's and what the tokenizer says (``expected``), and every
  KV block is free afterwards on every instance.
- A stop string ending at each character of the greedy text, replayed through the service's text
  path (``server/text.py``'s ``text_delta``) from the ``EngineOutput``s that layout streamed for the
  request without a stop string. That equals sending each stop string, because engines never see
  stop strings: they sample the same ids with or without one, and the cut, the usage and the
  finish reason are made from those outputs alone, in the service. The replays of the stop strings
  sent for real must equal their answers, which checks this on every layout.
- Logprobs, asked at the engine contract (the HTTP API does not offer them yet): the same tokens,
  and logprobs equal to float precision.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend_fixtures import TOKEN, serving
from checkpoints import build_checkpoint
from gpu_backend import SamplingParams
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.detokenizer import RequestText
from gpu_backend.engine.contract import Engine
from gpu_backend.engine.outputs import EngineOutput, Logprob
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines
from gpu_backend.server.text import text_delta
from gpu_backend.tokenizer import Tokenizer
from tokenizer_fixtures import build_byte_level_tokenizer, build_sentencepiece_tokenizer

MODEL = "@cf/test/exact"
MAX_TOKENS = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 64, "max_model_len": 256}
LAYOUTS: dict[str, ClusterConfig | None] = {
    "one-process": None,
    "tp2": ClusterConfig.colocated(tp=2, instance_timeout_s=20.0),
    "pp2": ClusterConfig.colocated(pp=2, instance_timeout_s=20.0),
    "prefill-decode": ClusterConfig.disaggregated(instance_timeout_s=20.0),
}
# kind -> (vocabulary size of checkpoint and tokenizer, the tokenizer's builder, a prompt)
TOKENIZERS: dict[str, tuple[int, Callable[..., Path], str]] = {
    "byte-level": (806, build_byte_level_tokenizer, "Once queen"),
    "sentencepiece": (1059, build_sentencepiece_tokenizer, "Once upon"),
}
CASES = [(layout, kind) for kind in TOKENIZERS for layout in LAYOUTS]
IDLE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str
    usage: dict[str, int]
    pieces: tuple[str, ...] = ()  # streamed: each event's text


@dataclass
class Run:
    """What one layout served for one tokenizer kind."""

    tokenizer: Tokenizer
    prompt_ids: list[int]
    outputs: list[EngineOutput]  # the request without a stop string, at the engine contract
    logprob_outputs: list[EngineOutput]  # the same request asking for logprobs
    stops: dict[str, str | None]  # sent for real: none, the hand-off's, one in the middle
    answers: dict[tuple[str, bool], Answer]  # by (stop's name, streamed)
    idle: dict[str, int]  # running requests and KV blocks in use once every answer is in

    @property
    def ids(self) -> list[int]:
        return [token for output in self.outputs for token in output.new_token_ids]


class Runs:
    """Each layout x tokenizer served once, on first use: one engine at a time."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders
        self._runs: dict[tuple[str, str], Run] = {}

    def get(self, layout: str, kind: str) -> Run:
        if (layout, kind) not in self._runs:
            self._runs[(layout, kind)] = serve(self.folders[kind], LAYOUTS[layout], TOKENIZERS[kind][2])
        return self._runs[(layout, kind)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("exactness")
    return Runs({kind: builder(build_checkpoint(root / kind, "llama", vocab_size=vocab), vocab_size=vocab)
                 for kind, (vocab, builder, _) in TOKENIZERS.items()})


def serve(folder: Path, cluster: ClusterConfig | None, prompt: str) -> Run:
    engines = LocalEngines({MODEL: folder}, cluster=cluster, **OPTIONS)
    try:
        engine = engines.engine(MODEL)
        tokenizer = engine.tokenizer
        assert tokenizer is not None
        prompt_ids = tokenizer.encode(prompt)
        outputs = asyncio.run(collect(engine, prompt_ids, GREEDY, "plain"))
        logprob_outputs = asyncio.run(collect(engine, prompt_ids, replace(GREEDY, logprobs=2), "logprobs"))
        ids = [token for output in outputs for token in output.new_token_ids]
        full, first = tokenizer.decode(ids), tokenizer.decode(ids[:1])
        assert tokenizer.decode(ids[:2])[len(first)] == " ", "the second token must start with a space"
        middle = len(full) // 2
        stops = {"none": None, "hand-off": full[len(first) - 1:len(first) + 2], "middle": full[middle - 1:middle + 1]}
        with serving(create_app(engines, TOKEN)) as url:
            answers = {(name, stream): complete(url, prompt, stop, stream)
                       for name, stop in stops.items() for stream in (False, True)}
        return Run(tokenizer, prompt_ids, outputs, logprob_outputs, stops, answers, wait_until_idle(engines))
    finally:
        engines.shutdown()


async def collect(engine: Engine, prompt_ids: list[int], params: SamplingParams, request_id: str) -> list[EngineOutput]:
    return [output async for output in engine.generate(prompt_ids, params, request_id)]


def complete(url: str, prompt: str, stop: str | None, stream: bool) -> Answer:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream,
            **({"stop": [stop]} if stop is not None else {}),
            **({"stream_options": {"include_usage": True}} if stream else {})}
    reply = httpx.post(f"{url}/v1/completions", json=body, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert reply.status_code == 200, reply.text
    if not stream:
        choice = reply.json()["choices"][0]
        return Answer(choice["text"], choice["finish_reason"], counts(reply.json()["usage"]))
    events = [json.loads(line[len("data: "):]) for line in reply.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    choices = [event["choices"][0] for event in events if event["choices"]]
    pieces = tuple(choice["text"] for choice in choices)
    return Answer("".join(pieces), choices[-1]["finish_reason"], counts(events[-1]["usage"]), pieces)


def counts(usage: dict[str, Any]) -> dict[str, int]:
    """The token counts; ``prompt_tokens_details.cached_tokens`` depends on what ran before, so it is left out."""
    return {name: usage[name] for name in ("prompt_tokens", "completion_tokens", "total_tokens")}


def wait_until_idle(engines: LocalEngines) -> dict[str, int]:
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while True:
        stats = engines.stats()[MODEL]
        idle = {"num_running": stats["num_running"], "kv_blocks_used": stats["kv_blocks_used"]}
        if not any(idle.values()) or time.monotonic() > deadline:
            return idle
        time.sleep(0.05)


def expected(tokenizer: Tokenizer, num_prompt_tokens: int, ids: list[int], stop: str | None) -> Answer:
    """What the tokenizer says: the text cut at the stop string, and usage up to the token that completed it."""
    full = tokenizer.decode(ids)
    if stop is None or stop not in full:
        return Answer(full, "length", usage(num_prompt_tokens, len(ids)))
    completed_by = next(count for count in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:count]))
    # a stop string completed by the token that also ended the request keeps "length", as one process always did
    finish_reason = "length" if completed_by == len(ids) else "stop"
    return Answer(full[:full.index(stop)], finish_reason, usage(num_prompt_tokens, completed_by))


def replay(run: Run, stop: str | None) -> Answer:
    """The service's answer to the request with ``stop``, made from the outputs streamed without it."""
    text = RequestText(run.tokenizer, stop=stop)
    pieces = []
    for output in run.outputs:
        delta = text_delta(output, text.add(output.new_token_ids, finished=output.finished))
        pieces.append(delta.text)
        if delta.finish_reason is not None:
            return Answer("".join(pieces), delta.finish_reason, usage(delta.prompt_tokens, delta.completion_tokens))
    raise AssertionError("the outputs never finished")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def whole(answer: Answer) -> Answer:
    return replace(answer, pieces=())


@pytest.mark.parametrize(("layout", "kind"), CASES, ids=[f"{layout}-{kind}" for layout, kind in CASES])
def test_answers_equal_one_process(runs: Runs, layout: str, kind: str) -> None:
    run, one = runs.get(layout, kind), runs.get("one-process", kind)
    assert run.ids == one.ids and len(run.ids) == MAX_TOKENS
    for (name, streamed), answer in run.answers.items():
        assert answer == one.answers[(name, streamed)], (name, streamed)
        assert whole(answer) == expected(run.tokenizer, len(run.prompt_ids), run.ids, run.stops[name]), name
        assert whole(answer) == whole(run.answers[(name, not streamed)])
    assert run.answers[("hand-off", False)].finish_reason == "stop"
    assert run.idle == {"num_running": 0, "kv_blocks_used": 0}


@pytest.mark.parametrize(("layout", "kind"), CASES, ids=[f"{layout}-{kind}" for layout, kind in CASES])
def test_a_stop_string_ending_at_every_position(runs: Runs, layout: str, kind: str) -> None:
    run, one = runs.get(layout, kind), runs.get("one-process", kind)
    for name, stop in run.stops.items():  # the replay is what sending the stop string gives
        assert replay(run, stop) == whole(run.answers[(name, False)]), name
    full = run.tokenizer.decode(run.ids)
    for end in range(1, len(full) + 1):
        stop = full[max(0, end - 3):end]
        want = expected(run.tokenizer, len(run.prompt_ids), run.ids, stop)
        assert replay(run, stop) == replay(one, stop) == want, stop


@pytest.mark.parametrize(("layout", "kind"), CASES, ids=[f"{layout}-{kind}" for layout, kind in CASES])
def test_logprobs_equal_one_process(runs: Runs, layout: str, kind: str) -> None:
    run, one = runs.get(layout, kind), runs.get("one-process", kind)
    got, want = logprobs(run.logprob_outputs), logprobs(one.logprob_outputs)
    assert [item.token_id for item in got] == [item.token_id for item in want] == run.ids
    assert [item.logprob for item in got] == pytest.approx([item.logprob for item in want], abs=1e-4)
    assert [item.top for item in got] == [pytest.approx(item.top, abs=1e-4) for item in want]


def logprobs(outputs: list[EngineOutput]) -> list[Logprob]:
    items = [item for output in outputs for item in output.new_logprobs or ()]
    assert len(items) == sum(len(output.new_token_ids) for output in outputs)
    return items
