"""gpu_backend.disagg.decode: the decode role reserves a prompt's blocks, posts the receives of each
chunk relayed to it (into scratch buffers for a request no longer here), lands the KV once it all
arrived and admits the request with its first token, or frees the blocks and says the transfer
failed; with typed messages, a fake transport and no process."""

from __future__ import annotations

from handoff_fakes import EverywhereRunner, FakeTransport, Messages

from gpu_backend.cluster.protocol import Rejected
from gpu_backend.disagg.decode import DecodeRole
from gpu_backend.disagg.protocol import Admit, KVChunk, Reserve, Reserved, TransferFailed
from gpu_backend.engine.sampling_params import SamplingParams
from gpu_backend.errors import InvalidRequestError

PARAMS = SamplingParams(max_tokens=8)


class FakeEngine:
    def __init__(self, free_blocks: list[int]) -> None:
        self.free_blocks = free_blocks
        self.admitted: list[tuple[str, int]] = []
        self.aborted: list[str] = []

    def reserve(self, prompt: list[int], params: SamplingParams, request_id: str,
                num_resumed_tokens: int = 0) -> list[int] | None:
        if not prompt:
            raise InvalidRequestError("the prompt is empty")
        return self.free_blocks or None

    def admit(self, request_id: str, first_token: int) -> str:
        self.admitted.append((request_id, first_token))
        return f"{request_id} decodes on from {first_token}"

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


def decode_role(free_blocks: list[int] | None = None) -> tuple[DecodeRole, FakeEngine, FakeTransport, Messages]:
    engine, kv, sent = FakeEngine([5, 6, 7] if free_blocks is None else free_blocks), FakeTransport(instance=1), Messages()
    return DecodeRole(engine, EverywhereRunner(), kv, sent.send), engine, kv, sent


def reserve_and_receive(role: DecodeRole, request_id: str = "r") -> None:
    role.handle(Reserve(request_id, [1, 2, 3], PARAMS))
    role.handle(KVChunk(request_id, 0, 1, 0, 2))
    role.handle(KVChunk(request_id, 0, 1, 2, 1))


def test_chunks_land_in_the_reserved_blocks_and_the_request_joins_with_its_first_token() -> None:
    role, engine, kv, sent = decode_role()
    reserve_and_receive(role)
    assert sent == [Reserved("r", [5, 6, 7])]
    assert kv.calls == [("receive", "r", 0, [5, 6]), ("receive", "r", 0, [7])]
    assert role.handle(Admit("r", 42)) and role.waiting
    assert role.after_step() == []  # on its way: the instance decodes on meanwhile
    kv.arrivals["r"] = (True, None)
    assert role.after_step() == ["r decodes on from 42"]
    assert kv.calls[-1] == ("land", "r") and engine.admitted == [("r", 42)] and not role.waiting


def test_a_transfer_that_failed_frees_the_blocks_and_says_why() -> None:
    role, engine, kv, sent = decode_role()
    for request_id, arrived, everywhere in (("here", (False, "receive from rank 0 timed out"), None),
                                            ("elsewhere", (True, None), False)):
        reserve_and_receive(role, request_id)
        role.handle(Admit(request_id, 1))
        kv.arrivals[request_id] = arrived
        if everywhere is not None:
            kv.everywhere[request_id] = everywhere
        assert role.after_step() == []
    assert engine.aborted == ["here", "elsewhere"] and engine.admitted == []
    assert [m for m in sent if isinstance(m, TransferFailed)] == [
        TransferFailed("here", "receive from rank 0 timed out"),
        TransferFailed("elsewhere", "another rank of this instance did not get its share of the KV in time")]


def test_a_chunk_for_a_request_no_longer_here_is_received_into_scratch_and_dropped() -> None:
    role, _, kv, _ = decode_role()
    role.handle(KVChunk("gone", 0, 1, 0, 2))
    assert kv.calls == [("receive", "gone", 0, [0, 0]), ("drop", "gone")]  # the pair stays in step


def test_a_request_aborted_while_its_kv_arrives_is_dropped_and_never_admitted() -> None:
    role, engine, kv, _ = decode_role()
    reserve_and_receive(role)
    role.handle(Admit("r", 9))
    role.abort("r")
    kv.arrivals["r"] = (True, None)
    assert role.after_step() == [] and engine.admitted == []
    assert kv.calls[-1] == ("drop", "r")
    role.handle(Reserve("s", [1], PARAMS))
    role.abort("s")  # left while its blocks were reserved: nothing on its way to drop
    role.handle(Admit("s", 3))  # the prefill instance's answer, after the abort
    assert not role.waiting and kv.calls[-1] == ("drop", "r")


def test_no_free_blocks_is_an_answer_and_invalid_input_a_refusal() -> None:
    role, _, _, sent = decode_role(free_blocks=[])
    role.handle(Reserve("r", [1, 2], PARAMS))
    role.handle(Reserve("bad", [], PARAMS))
    assert sent[0] == Reserved("r", None)
    assert isinstance(sent[1], Rejected) and isinstance(sent[1].error, InvalidRequestError)
    role.handle(Admit("r", 5))  # nothing was reserved: nothing lands
    assert not role.waiting and role.handle(object()) is False
