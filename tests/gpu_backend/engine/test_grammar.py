"""Structured output: grammars compiled for the model's tokenizer, per-sequence matchers and their
bitmasks, and the engine's constrained requests (valid output even from a tiny random model)."""

from __future__ import annotations

import json
import random
import re
import threading
from pathlib import Path
from typing import Any

import jsonschema
import llguidance.torch
import pytest
import torch

from gpu_backend import LLM, SamplingParams
from gpu_backend.config import EngineConfig
from gpu_backend.engine.core import EngineCore
from gpu_backend.engine.grammar import GrammarCompiler, allocate_bitmask
from gpu_backend.engine.structured_output import StructuredOutput
from gpu_backend.errors import InvalidRequestError
from gpu_backend.layers.sampler import apply_token_bitmask
from gpu_backend.tokenizer import Tokenizer

OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 64, "max_model_len": 400}
PROMPTS = [[5, 6, 7], [40, 41], [100, 101, 102, 103], [7], [250, 9, 11], [33, 34, 35]]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
ANY_TOKEN = "start: <[*]>*"  # every token id, any number of times


@pytest.fixture(scope="module")
def llm(checkpoints: dict[str, Path]) -> LLM:
    return LLM(str(checkpoints["llama"]), progress=False, **OPTIONS)


@pytest.fixture(scope="module")
def compiler(checkpoints: dict[str, Path]) -> GrammarCompiler:
    return GrammarCompiler(Tokenizer.from_pretrained(checkpoints["llama"]), 384, [2, 382])


def random_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """Nested objects, arrays, enums, bounded numbers and strings; required and optional fields.

    Strings, arrays and objects are kept short so that a random model's output ends within max_tokens."""
    kinds = ["integer", "number", "boolean", "enum", "string"] + (["object", "array"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 99)}
    if kind == "number":
        return {"type": "number", "minimum": -1.5, "maximum": rng.choice([2.5, 100])}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", 7, None, True], rng.randint(1, 4))}
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(1, 5)}
    if kind == "array":
        return {"type": "array", "items": random_schema(rng, depth + 1), "maxItems": rng.randint(1, 2)}
    names = rng.sample(["id", "size", "kind", "ok", "meta", "items"], rng.randint(1, 3))
    return {"type": "object", "properties": {name: random_schema(rng, depth + 1) for name in names},
            "required": [name for name in names if rng.random() < 0.6], "additionalProperties": False}


def completion_text(llm: LLM, output) -> str:
    """The completion's text less the token it ended on (this fixture's eos id 2 is the byte '#')."""
    ids = output.token_ids[:-1] if output.finish_reason == "stop" else output.token_ids
    return llm.engine.tokenizer.decode(ids)


# -- compiling and matching (no model) ---------------------------------------------------------------


def test_a_schema_compiles_once_and_each_request_gets_its_own_matcher(compiler: GrammarCompiler) -> None:
    params = SamplingParams(structured=StructuredOutput.json_schema(PERSON)).with_defaults(eos_token_ids=[2])
    first, second = compiler.matcher(params), compiler.matcher(params)
    assert len(compiler._compiled) == 1 and first.matcher is not second.matcher
    mask = allocate_bitmask(2, 384)
    first.fill_bitmask(mask, 0)
    assert allowed(mask[0]) == [compiler.tokenizer.tokenize_str("{")[0]]
    for token in compiler.tokenizer.tokenize_str('{"name":"x","age":7}'):  # the schema's key order
        assert first.accept(token)
    assert first.is_terminated and not second.is_terminated
    first.fill_bitmask(mask, 1)
    assert allowed(mask[1]) == [2]  # only the request's end token once the grammar is complete
    first.rollback(1)
    first.fill_bitmask(mask, 1)
    assert 2 not in allowed(mask[1]) and compiler.tokenizer.tokenize_str("}")[0] in allowed(mask[1])


def test_end_tokens_are_the_requests_not_llguidances(compiler: GrammarCompiler) -> None:
    """ignore_eos with stop_token_ids: the grammar ends on the stop token, never on the model's eos."""
    params = SamplingParams(structured=StructuredOutput.lark('start: "ok"'), ignore_eos=True, stop_token_ids=[9])
    matcher = compiler.matcher(params.with_defaults(eos_token_ids=[2, 382]))
    for token in compiler.tokenizer.tokenize_str("ok"):
        matcher.accept(token)
    mask = allocate_bitmask(1, 384)
    matcher.fill_bitmask(mask, 0)
    assert allowed(mask[0]) == [9]


def test_rows_of_one_batch_end_on_their_own_tokens(compiler: GrammarCompiler) -> None:
    """One step's rows filled together: rows with the model's eos, with a stop token instead, done or not."""
    done, going = StructuredOutput.lark('start: "ok"'), StructuredOutput.lark('start: "ok" "ok"')
    eos_ids = [2, 382]
    specs = [SamplingParams(structured=done), SamplingParams(structured=going),
             SamplingParams(structured=done, ignore_eos=True, stop_token_ids=[9]),
             SamplingParams(structured=going, ignore_eos=True, stop_token_ids=[9])]
    matchers = [compiler.matcher(params.with_defaults(eos_token_ids=eos_ids)) for params in specs]
    for matcher in matchers:
        for token in compiler.tokenizer.tokenize_str("ok"):
            matcher.accept(token)
    mask = allocate_bitmask(5, 384)  # row 4: unconstrained, left as it is
    compiler.fill_bitmask([(matcher, row) for row, matcher in enumerate(matchers)], mask)
    assert allowed(mask[0]) == eos_ids and allowed(mask[2]) == [9]
    assert not set(allowed(mask[1])) & {2, 9, 382} and not set(allowed(mask[3])) & {2, 9, 382}
    assert allowed(mask[4]) == list(range(384))
    single = allocate_bitmask(4, 384)
    for row, matcher in enumerate(matchers):
        matcher.fill_bitmask(single, row)
    assert torch.equal(single, mask[:4])  # filled one by one, the same rows


@pytest.mark.parametrize(("structured", "reason"), [
    (StructuredOutput.json_schema({"type": "object", "properties": {"a": {"type": "intger"}}}), "intger"),
    (StructuredOutput("json_schema", "{not json"), "not valid"),
    (StructuredOutput.lark("start: missing_rule"), "missing_rule"),
])
def test_an_uncompilable_spec_is_an_invalid_request_naming_the_problem(
        compiler: GrammarCompiler, llm: LLM, structured: StructuredOutput, reason: str) -> None:
    with pytest.raises(InvalidRequestError, match=reason):
        compiler.compile(structured)
    with pytest.raises(InvalidRequestError, match=reason):  # at add_request: the server answers 400
        llm.engine.add_request([5, 6], SamplingParams(structured=structured))
    assert not llm.engine.core.requests


def test_requests_that_could_never_end_are_refused(llm: LLM) -> None:
    structured = StructuredOutput.json_object()
    with pytest.raises(InvalidRequestError, match="ignore_eos"):
        llm.engine.add_request([5], SamplingParams(structured=structured, ignore_eos=True))
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        llm.engine.add_request([5], SamplingParams(structured=structured, min_tokens=2))


@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 384, 1000])
def test_the_bitmask_twin_equals_llguidances_kernel(vocab: int) -> None:
    """llguidance's kernel is torch.compile'd; compiled on CPU it costs half a minute, so this
    compares its eager body (the GPU test below compares the compiled one)."""
    generator = torch.Generator().manual_seed(vocab)
    bitmask = torch.randint(-2**31, 2**31 - 1, (5, (vocab + 31) // 32), dtype=torch.int32, generator=generator)
    logits = torch.randn(5, vocab, generator=generator)
    ours, theirs = logits.clone(), logits.clone()
    apply_token_bitmask(ours, bitmask)
    llguidance.torch.apply_token_bitmask_inplace_kernel.__wrapped__(theirs, bitmask)
    assert torch.equal(ours, theirs)
    expected = [[logits[row, t].item() if int(bitmask[row, t // 32]) >> (t % 32) & 1 else float("-inf")
                 for t in range(vocab)] for row in range(5)]
    assert ours.tolist() == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_bitmask_twin_equals_llguidances_compiled_kernel_on_gpu() -> None:
    generator = torch.Generator().manual_seed(0)
    for vocab in (384, 151_936):
        bitmask = torch.randint(-2**31, 2**31 - 1, (7, (vocab + 31) // 32), dtype=torch.int32, generator=generator)
        logits = torch.randn(7, vocab, generator=generator).cuda()
        ours, theirs = logits.clone(), logits.clone()
        apply_token_bitmask(ours, bitmask.cuda())
        llguidance.torch.apply_token_bitmask_inplace(theirs, bitmask.cuda())
        assert torch.equal(ours, theirs)


def allowed(row: torch.Tensor) -> list[int]:
    return [t for t in range(row.numel() * 32) if int(row[t // 32]) >> (t % 32) & 1]


# -- the engine ------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_random_schemas_give_valid_json(llm: LLM, temperature: float) -> None:
    rng = random.Random(19)
    schemas = [random_schema(rng) for _ in range(8)] + [PERSON]
    params = [SamplingParams(temperature=temperature, seed=index, max_tokens=120,
                             structured=StructuredOutput.json_schema(schema)) for index, schema in enumerate(schemas)]
    outputs = llm.generate([PROMPTS[i % len(PROMPTS)] for i in range(len(schemas))], params)
    for schema, output in zip(schemas, outputs):
        assert output.outputs[0].finish_reason == "stop", (schema, output.outputs[0].text)
        jsonschema.validate(json.loads(completion_text(llm, output.outputs[0])), schema)


def test_constrained_and_free_requests_share_a_batch(llm: LLM) -> None:
    free = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    seeded = SamplingParams(temperature=0.8, seed=5, max_tokens=12, ignore_eos=True)
    alone = llm.generate(PROMPTS[:2], [free, seeded])
    constrained = SamplingParams(temperature=0.0, max_tokens=60, structured=StructuredOutput.json_schema(PERSON))
    mixed = llm.generate(PROMPTS[:4], [free, seeded, constrained, constrained])
    assert [o.outputs[0].token_ids for o in mixed[:2]] == [o.outputs[0].token_ids for o in alone]
    for output in mixed[2:]:
        jsonschema.validate(json.loads(completion_text(llm, output.outputs[0])), PERSON)


def test_seeded_sampling_under_a_grammar_is_deterministic(llm: LLM) -> None:
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=60, structured=StructuredOutput.json_schema(PERSON))
    alone = llm.generate([PROMPTS[0]], params)[0].outputs[0].token_ids
    free = SamplingParams(temperature=1.0, max_tokens=5)
    batched = llm.generate([PROMPTS[1], PROMPTS[0], PROMPTS[2]], [free, params, free])[1].outputs[0].token_ids
    assert alone == batched


def test_json_object(llm: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=150, structured=StructuredOutput.json_object())
    for output in llm.generate(PROMPTS[:3], params):
        if output.outputs[0].finish_reason == "stop":
            assert isinstance(json.loads(completion_text(llm, output.outputs[0])), dict)
        else:  # deep objects may not close in time: a prefix of one
            assert completion_text(llm, output.outputs[0]).startswith("{")


def test_a_lark_grammar(llm: LLM) -> None:
    grammar = 'start: ("yes" | "no") " " NUMBER\nNUMBER: /[0-9]{1,3}/'
    params = SamplingParams(temperature=1.0, seed=2, max_tokens=20, structured=StructuredOutput.lark(grammar))
    for output in llm.generate(PROMPTS, params):
        assert output.outputs[0].finish_reason == "stop"
        assert re.fullmatch(r"(yes|no) [0-9]{1,3}", completion_text(llm, output.outputs[0]))


def test_a_constraint_that_allows_every_token_changes_nothing(llm: LLM) -> None:
    plain = SamplingParams(temperature=0.0, max_tokens=24)
    constrained = SamplingParams(temperature=0.0, max_tokens=24, structured=StructuredOutput.lark(ANY_TOKEN))
    want = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, plain)]
    assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, constrained)] == want


def test_a_cut_off_says_length(llm: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=4, structured=StructuredOutput.json_schema(PERSON))
    output = llm.generate([PROMPTS[0]], params)[0].outputs[0]
    assert output.finish_reason == "length" and len(output.token_ids) == 4
    assert output.text.startswith('{"')


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_preemption_and_recompute_keep_the_grammar(checkpoints: dict[str, Path], llm: LLM,
                                                   async_scheduling: bool) -> None:
    """A tiny KV cache preempts sequences mid-output; their grammars follow the tokens, not the KV."""
    tiny = LLM(str(checkpoints["llama"]), progress=False, device="cpu", dtype="float32", num_kv_blocks=6,
               block_size=16, max_model_len=400, async_scheduling=async_scheduling)
    params = [SamplingParams(temperature=t, seed=4, max_tokens=40, structured=StructuredOutput.json_schema(PERSON))
              for t in (0.0, 1.0, 0.0, 1.0)]
    prompts = [list(range(10 + 5 * i, 24 + 5 * i)) for i in range(4)]
    outputs = tiny.generate(prompts, params)
    assert tiny.engine.core.scheduler.num_preemptions > 0
    roomy = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outputs] == [o.outputs[0].token_ids for o in roomy]
    for output in outputs:
        if output.outputs[0].finish_reason == "stop":
            jsonschema.validate(json.loads(completion_text(llm, output.outputs[0])), PERSON)
    assert tiny.engine.core.block_manager.num_used_blocks == 0


def test_a_prefix_cache_hit_changes_nothing(llm: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=60, structured=StructuredOutput.json_schema(PERSON))
    prompt = list(range(60, 100))  # more than two full blocks: the second run reuses them
    first = llm.generate([prompt], params)[0]
    second = llm.generate([prompt], params)[0]
    assert second.num_cached_tokens >= 32
    assert first.outputs[0].token_ids == second.outputs[0].token_ids


def test_an_aborted_request_drops_its_matcher(llm: LLM) -> None:
    core: EngineCore = llm.engine.core
    params = SamplingParams(temperature=0.0, max_tokens=60, structured=StructuredOutput.json_schema(PERSON))
    core.add_request(PROMPTS[0], params, "to-abort")
    core.add_request(PROMPTS[1], params, "to-keep")
    for _ in range(3):
        core.step()
    matcher = core.requests["to-abort"].grammar
    assert matcher is not None and matcher.num_accepted > 0
    output = core.abort("to-abort")
    assert output is not None and output.finish_reason == "abort"
    while core.has_unfinished_requests():
        core.step()
    assert not core.requests and core.block_manager.num_used_blocks == 0


def test_each_token_advances_its_matcher_once(llm: LLM) -> None:
    core: EngineCore = llm.engine.core
    params = SamplingParams(temperature=0.0, max_tokens=60, structured=StructuredOutput.json_schema(PERSON))
    core.add_request(PROMPTS[2], params, "counted")
    matcher = core.requests["counted"].grammar
    tokens: list[int] = []
    finish = None
    while core.has_unfinished_requests():
        for output in core.step():
            tokens += output.new_token_ids
            finish = output.finish_reason or finish
    assert finish == "stop"
    assert matcher is not None and matcher.num_accepted == len(tokens) - 1  # all but the end token


def test_the_mask_is_filled_on_its_thread_while_the_step_goes_on(checkpoints: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Step k: k is planned on the host (while k-1's mask may still fill), k-1's held-back sampler is
    queued with its mask, then forward k (its sampler held back), then k-1 is read back (advancing the
    grammars), k's mask is started on the mask thread, and k-1's outputs are built while it fills."""
    core = EngineCore(EngineConfig(model=str(checkpoints["llama"]), **OPTIONS), progress=False)
    runner = core.runner
    events: list[str] = []
    for obj, name in ((runner, "plan"), (runner, "forward"), (runner, "sampler"), (core, "_read_back"),
                      (core, "_start_token_masks"), (core, "_outputs")):
        original = getattr(obj, name)
        monkeypatch.setattr(obj, name, lambda *a, _o=original, _n=name, **k: events.append(_n) or _o(*a, **k))
    params = SamplingParams(temperature=0.0, max_tokens=8, structured=StructuredOutput.lark('start: "abcdefghijklmnop"'))
    core.add_request(PROMPTS[0], params, "ordered")
    threads: set[str] = set()
    assert core._masks is not None
    filled = core._masks.fill

    def fill(*args: Any) -> Any:
        threads.add(threading.current_thread().name)
        events.append("the fill begins")
        return filled(*args)

    monkeypatch.setattr(core._masks, "fill", fill)
    while core.has_unfinished_requests():
        core.step()
    # The step goes on only once the fill has begun on its thread (it would otherwise wait for the GIL).
    steady = ["plan", "sampler", "forward", "_read_back", "_start_token_masks", "the fill begins", "_outputs"]
    assert events[:4] == ["plan", "forward", "_start_token_masks", "the fill begins"]  # nothing to read back yet
    assert events[4:11] == steady and events[11:18] == steady
    assert threads == {"grammar-masks_0"} and core.grammar_mask_s > 0


def test_a_mask_that_fails_on_its_thread_fails_the_next_step(checkpoints: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The error reaches the step loop's caller (AsyncLLM then fails every stream), not the mask thread alone."""
    core = EngineCore(EngineConfig(model=str(checkpoints["llama"]), **OPTIONS), progress=False)
    params = SamplingParams(temperature=0.0, max_tokens=8, structured=StructuredOutput.json_schema(PERSON))
    core.add_request(PROMPTS[0], params, "failing")
    core.step()  # compiles the grammar and starts the first mask
    assert core._grammars is not None

    def broken(*_: Any) -> None:
        raise RuntimeError("the grammar engine failed")

    monkeypatch.setattr(core._grammars, "fill_bitmask", broken)
    with pytest.raises(RuntimeError, match="the grammar engine failed"):
        for _ in range(3):
            core.step()


def test_without_async_scheduling_the_mask_is_made_inside_the_launch(checkpoints: dict[str, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch read back before its step returns: forward k, its mask, its sampler, in one step."""
    core = EngineCore(EngineConfig(model=str(checkpoints["llama"]), **{**OPTIONS, "async_scheduling": False}),
                      progress=False)
    events: list[str] = []
    for obj, name in ((core.runner, "forward"), (core.runner, "sampler"), (core, "_token_masks")):
        original = getattr(obj, name)
        monkeypatch.setattr(obj, name, lambda *a, _o=original, _n=name, **k: events.append(_n) or _o(*a, **k))
    params = SamplingParams(temperature=0.0, max_tokens=4, structured=StructuredOutput.lark('start: "abcdefghijklmnop"'))
    core.add_request(PROMPTS[0], params, "in-order")
    while core.has_unfinished_requests():
        core.step()
    assert events[:6] == ["forward", "_token_masks", "sampler"] * 2


def test_a_decode_instance_matcher_takes_the_prefill_instances_token(checkpoints: dict[str, Path]) -> None:
    """P/D: the first token was sampled (under the same grammar) by the prefill instance."""
    core = EngineCore(EngineConfig(model=str(checkpoints["llama"]), **OPTIONS), progress=False)
    params = SamplingParams(temperature=0.0, max_tokens=60, structured=StructuredOutput.json_schema(PERSON))
    first = core.tokenizer.encode("{", add_special_tokens=False)[0]
    assert core.reserve(PROMPTS[0], params, "handed-over") is not None
    assert core.admit("handed-over", first) is None
    tokens = [first]
    while core.has_unfinished_requests():
        for output in core.step():
            tokens += output.new_token_ids
    jsonschema.validate(json.loads(core.tokenizer.decode(tokens[:-1])), PERSON)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda_graphs", "eager"])
def test_constrained_decoding_on_gpu(checkpoints: dict[str, Path], enforce_eager: bool) -> None:
    """The mask is made while the forward pass (a graph replay in decode) runs, copied to the GPU
    and applied there: valid JSON, and a constraint allowing every token changes nothing."""
    gpu = LLM(str(checkpoints["llama"]), progress=False, device="cuda", dtype="float32", num_kv_blocks=64,
              max_model_len=400, max_num_seqs=8, enforce_eager=enforce_eager)
    rng = random.Random(7)
    schemas = [random_schema(rng) for _ in range(5)] + [PERSON]
    params = [SamplingParams(temperature=temperature, seed=index, max_tokens=120,
                             structured=StructuredOutput.json_schema(schema))
              for index, schema in enumerate(schemas) for temperature in (0.0, 1.0)]
    outputs = gpu.generate([PROMPTS[i % len(PROMPTS)] for i in range(len(params))], params)
    for param, output in zip(params, outputs):
        assert output.outputs[0].finish_reason == "stop"
        jsonschema.validate(json.loads(completion_text(gpu, output.outputs[0])), json.loads(param.structured.spec))
    plain = SamplingParams(temperature=0.0, max_tokens=24)
    every = SamplingParams(temperature=0.0, max_tokens=24, structured=StructuredOutput.lark(ANY_TOKEN))
    want = [o.outputs[0].token_ids for o in gpu.generate(PROMPTS, plain)]
    assert [o.outputs[0].token_ids for o in gpu.generate(PROMPTS, every)] == want
    assert gpu.engine.core.grammar_mask_s > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_engines_bitmask_is_pinned_and_allows_every_token() -> None:
    bitmask = allocate_bitmask(3, 1000, pinned=True)
    assert bitmask.is_pinned() and bitmask.shape == (3, 32) and bool((bitmask == -1).all())
    assert torch.equal(bitmask.cuda().cpu(), bitmask)


def test_penalties_under_a_grammar_read_the_batch_before_back_first(llm: LLM) -> None:
    """A penalty counts tokens on the host, so its batch is read back before the next is planned;
    the grammar still holds, beside a free request sharing the batch."""
    constrained = SamplingParams(temperature=0.0, max_tokens=60, repetition_penalty=1.3,
                                 structured=StructuredOutput.json_schema(PERSON))
    free = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outputs = llm.generate(PROMPTS[:3], [constrained, free, constrained])
    for output in (outputs[0], outputs[2]):
        assert output.outputs[0].finish_reason == "stop"
        jsonschema.validate(json.loads(completion_text(llm, output.outputs[0])), PERSON)
    assert len(outputs[1].outputs[0].token_ids) == 12
