"""Version 2 of the ECF format: a tensor-parallel rank reads, and checks, only the tiles of its slice.

Every test checkpoint round-trips whole and by every rank's rows and columns; a slice reads exactly the
bytes of the tiles that cover it (a recording handle shows which); a flipped byte outside a rank's
slice is never read by that rank, one inside names its tile; version 1 files still load and generate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from backend_fixtures import OPTIONS
from compressed_checkpoints import (
    as_version_1,
    assert_bit_identical,
    compress,
    decoded_tensors,
    flip_byte,
    source_tensors,
    stored_range,
)
from safetensors import safe_open

from gpu_backend import LLM, SamplingParams
from gpu_backend.checkpoint_tensor import CheckpointTensor
from gpu_backend.config import ModelConfig
from gpu_backend.errors import CompressedWeightsError, WeightsChecksumError
from gpu_backend.kernels import get_kernels
from gpu_backend.loader import load_weights, weight_files
from gpu_backend.models.registry import build_model
from gpu_backend.parallel.state import TensorParallel, set_tensor_parallel
from gpu_backend.weights import compress as compress_module
from gpu_backend.weights import compress_tensors, open_weights
from gpu_backend.weights.codec import encode
from gpu_backend.weights.format import (
    CODED,
    ESCAPE_COLS,
    ESCAPE_ROW_OFFSETS,
    ESCAPE_VALUES,
    EXPONENT_INDEX,
    FORMAT_VERSION,
    PARTS,
    SIGN_MANTISSA,
    FileHeader,
    part_name,
)
from gpu_backend.weights.packed import slice_cols, slice_rows
from gpu_backend.weights.reader import CompressedFile

CPU = torch.device("cpu")
ROWS, COLS = 256, 512  # the hand-made tensor: tiles of 64 rows x 128 columns at the default minimum
ESCAPED = [(3, 5), (10, 400), (130, 7), (200, 300), (255, 511)]


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of 512 weights, so the tiny test checkpoints' matrices have several (real ones have 8 x 8)."""
    monkeypatch.setattr(compress_module, "MIN_TILE_WEIGHTS", 512)


@pytest.fixture
def tensor_parallel() -> Iterator[None]:
    yield
    set_tensor_parallel(TensorParallel())


def header_of(file: Path) -> FileHeader:
    with safe_open(file, framework="pt", device="cpu") as handle:
        header = FileHeader.from_metadata(handle.metadata(), str(file))
    assert header is not None
    return header


def weight() -> torch.Tensor:
    """A bfloat16 matrix with escapes (exponents no other weight has) in rows of several row blocks."""
    tensor = (torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(0)) * 0.02).bfloat16()
    for i, (row, col) in enumerate(ESCAPED):
        tensor[row, col] = 2.0 ** (60 + i)
    return tensor


@pytest.fixture
def one_tensor(tmp_path: Path) -> Path:
    file = tmp_path / "w.safetensors"
    compress_tensors([("w", weight())], file)
    assert header_of(file).tensors["w"].tile_shape == (64, 128)
    return file


def rank_ranges(length: int, size: int, even: bool = False) -> list[tuple[int, int]]:
    step = length // size
    return [(rank * step, step) for rank in range(size) if not even or (rank * step) % 2 == 0]


def test_every_test_checkpoint_round_trips_whole_and_by_every_ranks_rows_and_columns(
        checkpoints: dict[str, Path], tmp_path: Path, small_tiles: None) -> None:
    for arch, folder in checkpoints.items():
        compress(folder, tmp_path / arch)
        source = source_tensors(folder)
        assert_bit_identical(source, decoded_tensors(tmp_path / arch))
        for file in weight_files(tmp_path / arch):
            header = header_of(file)
            assert header.version == FORMAT_VERSION == 2
            coded = [name for name, entry in header.tensors.items() if entry.encoding == CODED]
            assert coded and all(header.tensors[name].grid().num_row_blocks > 1 for name in coded), arch
            with open_weights(file) as handle:
                for name in coded:
                    whole = handle.get_slice(name).parts()
                    rows, cols = source[name].shape
                    for size in (2, 4):
                        for start, length in rank_ranges(rows, size):
                            got = handle.get_slice(name)[start:start + length]
                            assert torch.equal(got, source[name][start:start + length]), (name, start)
                            parts = handle.get_slice(name).parts((0, start, length))
                            expected = slice_rows(whole, start, length)
                            assert all(torch.equal(parts[k], expected[k]) for k in PARTS), (name, start)
                        for start, length in rank_ranges(cols, size):
                            got = handle.get_slice(name)[:, start:start + length]
                            assert torch.equal(got, source[name][:, start:start + length]), (name, start)
                            if start % 2 == 0:
                                parts = handle.get_slice(name).parts((1, start, length))
                                expected = slice_cols(whole, start, length)
                                assert all(torch.equal(parts[k], expected[k]) for k in PARTS), (name, start)


class Recording:
    """A safetensors handle that records what is read: (stored name, index) for each slice read."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.reads: list[tuple[str, tuple[Any, ...]]] = []

    def keys(self) -> list[str]:
        return self.handle.keys()

    def metadata(self) -> dict[str, str]:
        return self.handle.metadata()

    def get_tensor(self, name: str) -> torch.Tensor:
        self.reads.append((name, (Ellipsis,)))
        return self.handle.get_tensor(name)

    def get_slice(self, name: str) -> Any:
        recording = self

        class Slice:
            def __getattr__(self, attribute: str) -> Any:
                return getattr(recording.handle.get_slice(name), attribute)

            def __getitem__(self, index: tuple[Any, ...]) -> torch.Tensor:
                recording.reads.append((name, index))
                return recording.handle.get_slice(name)[index]

        return Slice()


def escapes_in_rows(first: int, end: int) -> int:
    offsets = encode(weight())[ESCAPE_ROW_OFFSETS]
    return int(offsets[end] - offsets[first])


@pytest.mark.parametrize("along", [(0, 128, 128), (0, 64, 64), (1, 256, 256), (1, 0, 128)])
def test_a_slice_reads_only_the_tiles_that_cover_it(one_tensor: Path, along: tuple[int, int, int]) -> None:
    dim, start, length = along
    with safe_open(one_tensor, framework="pt", device="cpu") as raw:
        recording = Recording(raw)
        handle = CompressedFile(recording, header_of(one_tensor), one_tensor, CPU)
        stored = handle.get_slice("w")
        index = (slice(start, start + length),) if dim == 0 else (slice(None), slice(start, start + length))
        assert torch.equal(stored[index], weight()[index])
    reads = {name.split("#ecf.")[1]: index for name, index in recording.reads}
    assert len(reads) == len(recording.reads) == len(PARTS)  # each part read once, in one slice
    rows = slice(start, start + length) if dim == 0 else slice(0, ROWS)
    cols = slice(start, start + length) if dim == 1 else slice(0, COLS)
    assert reads[SIGN_MANTISSA] == (slice(None), rows, cols)
    assert reads[EXPONENT_INDEX] == (rows, slice(cols.start // 2, cols.stop // 2))
    num_escapes = escapes_in_rows(rows.start, rows.stop)
    coded = length * (COLS if dim == 0 else ROWS) * 3 // 2  # 1.5 bytes a weight
    assert stored.bytes_read == coded + 16 + 4 * (ROWS + 1) + 6 * num_escapes  # + table, row offsets, escapes


def test_a_rank_never_reads_a_corrupted_byte_outside_its_slice_and_names_the_tile_inside(one_tensor: Path) -> None:
    start, _ = stored_range(one_tensor, part_name("w", SIGN_MANTISSA))
    flip_byte(one_tensor, start + 10 * COLS + 20)  # row 10, column 20: tile (0, 0)
    source = weight()
    with open_weights(one_tensor) as handle:
        assert torch.equal(handle.get_slice("w")[128:256], source[128:256])  # rank 1 of 2, column-parallel
        assert torch.equal(handle.get_slice("w")[:, 256:512], source[:, 256:512])  # rank 1 of 2, row-parallel
        tile = r"stored part 'sign_mantissa', tile \(0, 0\) \(rows 0..63, columns 0..127\), has crc32"
        for read in (lambda: handle.get_slice("w")[0:128], lambda: handle.get_slice("w")[:, 0:256],
                     lambda: handle.get_slice("w").parts((0, 0, 128)), lambda: handle.get_tensor("w")):
            with pytest.raises(WeightsChecksumError, match=f"w.safetensors: tensor 'w': {tile}"):
                read()


def test_a_corrupted_escape_names_its_row_block_and_spares_the_other_rows(one_tensor: Path) -> None:
    start, _ = stored_range(one_tensor, part_name("w", ESCAPE_VALUES))
    row, col = ESCAPED[2]  # row 130, in row block 2
    parts = encode(weight())
    position = int(parts[ESCAPE_ROW_OFFSETS][row]) + parts[ESCAPE_COLS][parts[ESCAPE_ROW_OFFSETS][row]:].tolist().index(col)
    flip_byte(one_tensor, start + 2 * position)
    with open_weights(one_tensor) as handle:
        assert torch.equal(handle.get_slice("w")[0:128], weight()[0:128])
        with pytest.raises(WeightsChecksumError,
                           match=r"stored part 'escape_values', row block 2 \(the escapes of rows 128..191\), has"):
            handle.get_slice("w")[128:256]


def test_a_slice_outside_the_tensor_or_from_an_odd_column_is_refused(one_tensor: Path) -> None:
    with open_weights(one_tensor) as handle:
        with pytest.raises(CompressedWeightsError, match=r"has no coded slice of 128 rows from 200"):
            handle.get_slice("w").parts((0, 200, 128))
        with pytest.raises(CompressedWeightsError, match="must start at an even column, not 3"):
            handle.get_slice("w").parts((1, 3, 100))
        assert handle.get_slice("w").coded_parts(torch.bfloat16, (1, 3, 100)) is None  # the caller codes it
        assert torch.equal(handle.get_slice("w")[:, 3:103], weight()[:, 3:103])  # dense: decoded from column 2


def test_checkpoint_tensor_gives_a_ranks_coded_slice_reading_only_its_tiles(one_tensor: Path) -> None:
    with open_weights(one_tensor) as handle:
        whole = CheckpointTensor("w", handle.get_slice("w"), dtype=torch.bfloat16, device=CPU)
        parts = whole.coded_parts()
        for along, cut in (((0, 128, 128), slice_rows), ((1, 256, 256), slice_cols)):
            tensor = CheckpointTensor("w", handle.get_slice("w"), dtype=torch.bfloat16, device=CPU)
            sliced = tensor.coded_parts(along)
            assert all(torch.equal(sliced[k], cut(parts, *along[1:])[k]) for k in PARTS)
            assert tensor.bytes_read < 0.55 * whole.bytes_read


def test_version_1_files_still_load_slice_and_name_the_corrupted_part(checkpoints: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    compress(checkpoints["llama"], tmp_path / "v1")
    as_version_1(tmp_path / "v1")
    file = tmp_path / "v1" / "model.safetensors"
    assert header_of(file).version == 1 and not any(e.tiled for e in header_of(file).tensors.values())
    source = source_tensors(checkpoints["llama"])
    assert_bit_identical(source, decoded_tensors(tmp_path / "v1"))
    name = "model.layers.0.mlp.up_proj.weight"
    with open_weights(file) as handle:
        assert torch.equal(handle.get_slice(name)[32:64], source[name][32:64])
        stored = handle.get_slice(name)
        parts = stored.parts((1, 32, 32))
        assert stored.bytes_read == sum(p.nbytes for p in handle.get_slice(name).parts().values())  # read whole
        assert torch.equal(parts[SIGN_MANTISSA], handle.get_slice(name).parts()[SIGN_MANTISSA][:, :, 32:64])
    sampling = SamplingParams(temperature=0.0, max_tokens=12)
    expected = [o.outputs[0].token_ids for o in LLM(str(checkpoints["llama"]), progress=False, **OPTIONS)
                .generate(["Once upon a time"], sampling)]
    got = [o.outputs[0].token_ids for o in LLM(str(tmp_path / "v1"), progress=False, **OPTIONS)
           .generate(["Once upon a time"], sampling)]
    assert got == expected
    start, end = stored_range(file, part_name(name, SIGN_MANTISSA))
    flip_byte(file, end - 1)
    with open_weights(file) as handle, \
            pytest.raises(WeightsChecksumError, match=f"tensor '{name}': stored part 'sign_mantissa' has crc32"):
        handle.get_slice(name)[0:8]  # version 1: any slice reads, and checks, the whole part


def load_rank(folder: Path, rank: int, size: int) -> tuple[dict[str, torch.Tensor], int]:
    set_tensor_parallel(TensorParallel(rank=rank, size=size))
    with torch.device("cpu"):
        model = build_model(ModelConfig.from_pretrained(folder), get_kernels("torch"))
    num_bytes_read = load_weights(model, folder, dtype=torch.float32, device=CPU, progress=False)
    return {name: p.data.clone() for name, p in model.named_parameters(remove_duplicate=False)}, num_bytes_read


@pytest.mark.usefixtures("tensor_parallel", "small_tiles")
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_each_tp2_rank_loads_its_slices_reading_about_half_of_the_coded_bytes(checkpoints: dict[str, Path],
                                                                             tmp_path: Path, arch: str) -> None:
    compress(checkpoints[arch], tmp_path / "v2")
    compress(checkpoints[arch], tmp_path / "v1")
    as_version_1(tmp_path / "v1")
    _, everything = load_rank(tmp_path / "v2", 0, 1)
    for rank in range(2):
        expected, _ = load_rank(checkpoints[arch], rank, 2)
        for version in ("v2", "v1"):
            params, num_bytes_read = load_rank(tmp_path / version, rank, 2)
            assert params.keys() == expected.keys()
            for name, tensor in expected.items():
                assert torch.equal(params[name], tensor), (version, name)
            if version == "v2":  # the tiles of its slices, the small whole parts and the norms
                assert num_bytes_read < 0.6 * everything, (rank, num_bytes_read, everything)
            else:  # version 1 reads every part whole
                assert num_bytes_read == everything


@pytest.mark.usefixtures("tensor_parallel", "small_tiles")
def test_each_tp2_rank_keeps_its_coded_slices_reading_about_half_of_the_coded_bytes(checkpoints: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    """Kernel mode (keep_compressed, bfloat16): each rank holds its slices coded, read tile by tile from the file."""
    from gpu_backend.layers.linear import LinearBase

    compress(checkpoints["llama"], tmp_path / "v2", dtype=torch.bfloat16)
    _, everything = load_rank(tmp_path / "v2", 0, 1)
    for rank in range(2):
        expected, _ = load_rank(checkpoints["llama"], rank, 2)
        set_tensor_parallel(TensorParallel(rank=rank, size=2))
        with torch.device("cpu"):
            model = build_model(ModelConfig.from_pretrained(tmp_path / "v2"), get_kernels("torch")).to(torch.bfloat16)
        num_bytes_read = load_weights(model, tmp_path / "v2", dtype=torch.bfloat16, device=CPU, progress=False,
                                      keep_compressed=True)
        kept = {name: module for name, module in model.named_modules()
                if isinstance(module, LinearBase) and module.compressed is not None}
        assert kept, "no linear layer kept its weight coded"
        for name, module in kept.items():
            assert torch.equal(module.compressed.decode(), expected[f"{name}.weight"].to(torch.bfloat16)), (rank, name)
        assert num_bytes_read < 0.6 * everything, (rank, num_bytes_read, everything)
