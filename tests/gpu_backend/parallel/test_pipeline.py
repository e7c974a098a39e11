"""Pipeline stages: how layers are split, and a chain of stage models equals the whole model.

Each stage model holds only its layers (and the embedding / final norm + LM head at the ends),
owns its own KV cache, and hands (hidden, residual) to the next; the last stage's logits must
match the whole model's for a prefill and the decode step that reads the cache after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from checkpoints import build_checkpoint
from gpu_backend.config import ModelConfig
from gpu_backend.kernels import get_kernels
from gpu_backend.layers.attention import AttentionMetadata
from gpu_backend.loader import load_weights
from gpu_backend.models.registry import build_model
from gpu_backend.parallel.pipeline import PipelineStage, split_layers, stage_of

VOCAB = 384
BLOCK_SIZE = 4
BLOCK_TABLES = [[0, 1], [2, 3]]  # two sequences of up to 8 tokens
PROMPT_LENS = [5, 7]
# (arch, num_layers, pp_size, explicit layer counts)
LAYOUTS = [("llama", 3, 2, None), ("qwen2", 5, 3, None), ("llama32_tied", 3, 2, None),
           ("llama32_tied", 5, 3, (1, 3, 1)), ("llama", 3, 3, None)]
LAYOUT_IDS = ["llama-3-over-2", "qwen2-5-over-3", "tied-3-over-2", "tied-5-as-1,3,1", "llama-3-over-3"]


# -- splitting layers ----------------------------------------------------------------------------

@pytest.mark.parametrize(("num_layers", "pp_size", "explicit", "expected"), [
    (4, 2, None, [range(0, 2), range(2, 4)]),
    (3, 2, None, [range(0, 2), range(2, 3)]),  # the extra layer goes to the first stage
    (5, 3, None, [range(0, 2), range(2, 4), range(4, 5)]),
    (7, 1, None, [range(0, 7)]),
    (3, 3, None, [range(0, 1), range(1, 2), range(2, 3)]),
    (8, 2, [5, 3], [range(0, 5), range(5, 8)]),
    (5, 3, (1, 3, 1), [range(0, 1), range(1, 4), range(4, 5)]),
])
def test_split_layers(num_layers: int, pp_size: int, explicit: Sequence[int] | None, expected: list[range]) -> None:
    assert split_layers(num_layers, pp_size, explicit) == expected


@pytest.mark.parametrize(("num_layers", "pp_size", "explicit", "message"), [
    (2, 3, None, "cannot split 2 layers over 3 pipeline stages.*use at most 2 stages"),
    (4, 0, None, "at least one stage"),
    (8, 2, [5, 2], "sum to 7 but the model has 8 layers; give counts that sum to 8"),
    (8, 2, [4, 2, 2], "name 3 stages but the pipeline has 2; give one count per stage"),
    (4, 2, [4, 0], "must all be positive"),
    (4, 2, [5, -1], "must all be positive"),
])
def test_split_layers_errors_say_what_to_fix(num_layers: int, pp_size: int, explicit: list[int] | None,
                                             message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_layers(num_layers, pp_size, explicit)


def test_stage_of_gives_each_rank_its_range_and_role() -> None:
    stages = [stage_of(rank, 3, 5) for rank in range(3)]
    assert stages == [PipelineStage(0, 2, True, False), PipelineStage(2, 4, False, False),
                      PipelineStage(4, 5, False, True)]
    assert [s.num_layers for s in stages] == [2, 2, 1] and stages[1].layers == range(2, 4)
    assert stage_of(1, 2, 8, explicit=[5, 3]) == PipelineStage(5, 8, is_first=False, is_last=True)
    assert PipelineStage.whole(6) == PipelineStage(0, 6, is_first=True, is_last=True)
    with pytest.raises(ValueError, match="pp_rank must be in 0..1"):
        stage_of(2, 2, 4)


def test_a_stage_must_be_a_real_range() -> None:
    with pytest.raises(ValueError, match="start_layer < end_layer"):
        PipelineStage(2, 2, is_first=False, is_last=True)
    with pytest.raises(ValueError, match="starts at layer 0"):
        PipelineStage(1, 3, is_first=True, is_last=True)
    with pytest.raises(ValueError, match="does not fit a model of 3 layers"):
        PipelineStage(0, 2, is_first=True, is_last=True).check_fits(3)


# -- stage models against the whole model --------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    root = tmp_path_factory.mktemp("pp")
    wanted = {(arch, num_layers) for arch, num_layers, _, _ in LAYOUTS}
    return {(arch, n): build_checkpoint(root / f"{arch}-{n}", arch, vocab_size=VOCAB, num_layers=n)
            for arch, n in sorted(wanted)}


def build(folder: Path, stage: PipelineStage | None) -> torch.nn.Module:
    """As ModelRunner._build_and_load does on CPU in float32, without loading weights."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device("cpu"):
            model = build_model(ModelConfig.from_pretrained(folder), get_kernels("torch"), stage)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def whole_model(folder: Path) -> torch.nn.Module:
    model = build(folder, None)
    load_weights(model, folder, dtype=torch.float32, device=torch.device("cpu"), progress=False)
    return attach_kv_cache(model)


def stage_models(folder: Path, pp_size: int, explicit: Sequence[int] | None,
                 whole: torch.nn.Module | None) -> list[torch.nn.Module]:
    """Every stage's model, filled by the loader, or by name from ``whole``'s state dict."""
    num_layers = ModelConfig.from_pretrained(folder).num_hidden_layers
    models = []
    for rank in range(pp_size):
        model = build(folder, stage_of(rank, pp_size, num_layers, explicit))
        if whole is None:
            load_weights(model, folder, dtype=torch.float32, device=torch.device("cpu"), progress=False)
        else:
            model.load_state_dict({name: whole.state_dict()[name] for name in model.state_dict()})
        models.append(attach_kv_cache(model))
    return models


def attach_kv_cache(model: torch.nn.Module) -> torch.nn.Module:
    """A small cache of this model's own for each of its layers, as a stage's runner allocates it."""
    num_blocks = sum(len(table) for table in BLOCK_TABLES)
    for layer in model.stage_layers():
        attn = layer.self_attn.attn
        shape = (num_blocks, BLOCK_SIZE, attn.num_kv_heads, attn.head_dim)
        attn.k_cache, attn.v_cache = torch.zeros(shape), torch.zeros(shape)
    return model


def metadata(query_lens: list[int], seq_lens: list[int]) -> AttentionMetadata:
    """Each sequence's last query_lens[i] of seq_lens[i] tokens, in the blocks of BLOCK_TABLES."""
    starts, slots = [0], []
    for row, (count, end) in enumerate(zip(query_lens, seq_lens)):
        starts.append(starts[-1] + count)
        slots += [BLOCK_TABLES[row][p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(end - count, end)]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots), query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_tables=torch.tensor(BLOCK_TABLES, dtype=torch.int32),
        max_query_len=max(query_lens), max_seq_len=max(seq_lens), is_decode_only=max(query_lens) == 1,
        num_decodes=len(query_lens) if max(query_lens) == 1 else 0)


def steps() -> list[tuple[torch.Tensor, torch.Tensor, AttentionMetadata]]:
    """A prefill of both prompts, then one decode token each (which reads every layer's cache)."""
    ids = torch.randint(0, VOCAB, (sum(PROMPT_LENS) + 2,), generator=torch.Generator().manual_seed(0))
    prefill_positions = torch.cat([torch.arange(n) for n in PROMPT_LENS])
    decode_lens = [n + 1 for n in PROMPT_LENS]
    return [(ids[:sum(PROMPT_LENS)], prefill_positions, metadata(PROMPT_LENS, PROMPT_LENS)),
            (ids[sum(PROMPT_LENS):], torch.tensor(PROMPT_LENS), metadata([1, 1], decode_lens))]


@torch.inference_mode()
def run_chain(stages: list[torch.nn.Module], input_ids: torch.Tensor, positions: torch.Tensor,
              meta: AttentionMetadata) -> torch.Tensor:
    """Every stage in turn, each starting from the previous one's (hidden, residual)."""
    intermediate = None
    for model in stages[:-1]:
        intermediate = model(input_ids, positions, meta, intermediate)
        hidden, residual = intermediate
        assert hidden.shape == residual.shape == (len(input_ids), model.config.hidden_size)
    return stages[-1].compute_logits(stages[-1](input_ids, positions, meta, intermediate))


def assert_chain_matches_whole(stages: list[torch.nn.Module], whole: torch.nn.Module) -> None:
    for input_ids, positions, meta in steps():
        expected = run_chain([whole], input_ids, positions, meta)
        torch.testing.assert_close(run_chain(stages, input_ids, positions, meta), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("arch", "num_layers", "pp_size", "explicit"), LAYOUTS, ids=LAYOUT_IDS)
def test_stages_in_a_chain_give_the_whole_models_logits(arch: str, num_layers: int, pp_size: int,
                                                        explicit: Sequence[int] | None,
                                                        folders: dict[tuple[str, int], Path]) -> None:
    whole = whole_model(folders[arch, num_layers])
    assert_chain_matches_whole(stage_models(folders[arch, num_layers], pp_size, explicit, whole), whole)


@pytest.mark.parametrize(("arch", "num_layers", "pp_size", "explicit"), LAYOUTS, ids=LAYOUT_IDS)
def test_the_loader_fills_each_stage_from_the_checkpoint(arch: str, num_layers: int, pp_size: int,
                                                         explicit: Sequence[int] | None,
                                                         folders: dict[tuple[str, int], Path]) -> None:
    whole = whole_model(folders[arch, num_layers])
    stages = stage_models(folders[arch, num_layers], pp_size, explicit, whole=None)
    expected = whole.state_dict()
    for model in stages:
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, expected[name]), name
    assert_chain_matches_whole(stages, whole)


def belongs(name: str, stage: PipelineStage) -> bool:
    """Which of the whole model's parameters a stage should hold, from the names alone."""
    if name.startswith("model.layers."):
        return int(name.split(".")[2]) in stage.layers
    return stage.is_first if name.startswith("model.embed_tokens.") else stage.is_last


@pytest.mark.parametrize(("arch", "num_layers", "pp_size", "explicit"), LAYOUTS, ids=LAYOUT_IDS)
def test_a_stage_holds_only_its_layers(arch: str, num_layers: int, pp_size: int, explicit: Sequence[int] | None,
                                       folders: dict[tuple[str, int], Path]) -> None:
    folder = folders[arch, num_layers]
    whole = build(folder, None)
    whole_names = set(dict(whole.named_parameters(remove_duplicate=False)))
    stages = stage_models(folder, pp_size, explicit, whole)
    for model in stages:
        names = set(dict(model.named_parameters(remove_duplicate=False)))
        assert names == {name for name in whole_names if belongs(name, model.stage)}
        assert [id(layer) for layer in model.stage_layers()] == [id(model.model.layers[i]) for i in model.stage.layers]
        assert len(model.model.layers) == num_layers  # placeholders keep model.layers.{i} numbering
    # a tied last stage that is not also first has an lm_head of its own: one extra vocab x hidden
    tied = whole.config.tie_word_embeddings
    extra = VOCAB * whole.config.hidden_size if tied else 0
    assert sum(p.numel() for m in stages for p in m.parameters()) == sum(p.numel() for p in whole.parameters()) + extra
    assert stages[-1].weight_aliases == ({"model.embed_tokens.weight": "lm_head.weight"} if tied else {})


@pytest.mark.parametrize(("arch", "num_layers", "pp_size", "explicit"), LAYOUTS, ids=LAYOUT_IDS)
def test_every_checkpoint_tensor_has_one_owner(arch: str, num_layers: int, pp_size: int,
                                               explicit: Sequence[int] | None,
                                               folders: dict[tuple[str, int], Path]) -> None:
    folder = folders[arch, num_layers]
    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        names = list(handle.keys())  # noqa: SIM118 (safe_open is not a mapping)
    stages = [build(folder, stage_of(rank, pp_size, num_layers, explicit)) for rank in range(pp_size)]
    tied = stages[0].config.tie_word_embeddings
    for name in names:
        owners = [rank for rank, model in enumerate(stages) if model.owns_weight(name)]
        if tied and name == "model.embed_tokens.weight":  # feeds the first stage's embedding and the last's lm_head
            assert owners == [0, pp_size - 1]
        else:
            assert len(owners) == 1 and belongs(name, stages[owners[0]].stage), (name, owners)


def test_the_whole_model_is_one_stage(folders: dict[tuple[str, int], Path]) -> None:
    folder = folders["llama32_tied", 3]
    model = build(folder, None)
    assert model.stage == PipelineStage.whole(3) and len(model.stage_layers()) == 3
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.weight_aliases == {}
    assert all(model.owns_weight(name) for name in model.state_dict())


def test_a_later_stage_needs_the_previous_stages_output(folders: dict[tuple[str, int], Path]) -> None:
    model = attach_kv_cache(build(folders["llama", 3], stage_of(1, 3, 3)))
    input_ids, positions, meta = steps()[0]
    assert model.model.embed_tokens is None and model.model.norm is None and model.lm_head is None
    with pytest.raises(ValueError, match="pass intermediate"):
        model(input_ids, positions, meta)
