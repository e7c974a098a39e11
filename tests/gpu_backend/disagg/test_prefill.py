"""gpu_backend.disagg.prefill: the prefill role holds a prompt's blocks and pushes its KV chunk by
chunk as the prompt is computed, reports each chunk in the order posted, and frees the blocks
once the prompt is done; with typed messages, a fake transport and no process."""

from __future__ import annotations

from types import SimpleNamespace

from handoff_fakes import BLOCK_SIZE, EverywhereRunner, FakeTransport, Messages, sequence

from gpu_backend.cluster.protocol import Accepted, Rejected
from gpu_backend.disagg.prefill import PrefillRole
from gpu_backend.disagg.protocol import Handoff, KVChunk, KVPushed, Prefill
from gpu_backend.engine.sampling_params import SamplingParams
from gpu_backend.errors import InvalidRequestError

PROMPT = list(range(10))  # 3 blocks of 4: the last one partial
BLOCKS = [20, 21, 22]


class FakeEngine:
    def __init__(self) -> None:
        self.block_manager = SimpleNamespace(block_size=BLOCK_SIZE)
        self.requests: dict[str, SimpleNamespace] = {}
        self.held: dict[str, SimpleNamespace] = {}
        self.added: list[tuple] = []
        self.released: list[str] = []

    def add_request(self, prompt: list[int], params: SamplingParams, request_id: str, *, hold_blocks: bool,
                    num_resumed_tokens: int = 0) -> None:
        if not prompt:
            raise InvalidRequestError("the prompt is empty")
        self.added.append((request_id, params.max_tokens, params.min_tokens, hold_blocks))
        self.requests[request_id] = SimpleNamespace(seq=sequence(len(prompt), BLOCKS))

    def compute(self, request_id: str, num_tokens: int) -> None:
        self.requests[request_id].seq.num_computed_tokens = num_tokens

    def end(self, request_id: str, finish_reason: str | None) -> None:
        """The prompt is done (``finish_reason``) and its blocks held, or aborted (None: nothing held)."""
        seq = self.requests.pop(request_id).seq
        if finish_reason is not None:
            seq.finish_reason = finish_reason
            self.held[request_id] = seq

    def release_blocks(self, request_id: str) -> None:
        self.held.pop(request_id, None)
        self.released.append(request_id)


def prefill_role() -> tuple[PrefillRole, FakeEngine, FakeTransport, EverywhereRunner, Messages]:
    engine, kv, runner, sent = FakeEngine(), FakeTransport(instance=0), EverywhereRunner(), Messages()
    return PrefillRole(engine, runner, kv, sent.send), engine, kv, runner, sent


def pushed(sent: Messages) -> list[KVChunk]:
    return [chunk for message in sent if isinstance(message, KVPushed) for chunk in message.chunks]


def test_the_kv_goes_out_as_blocks_complete_and_the_partial_last_one_with_the_first_token() -> None:
    role, engine, kv, runner, sent = prefill_role()
    params = SamplingParams(max_tokens=12, min_tokens=4)
    assert role.handle(Prefill("r", PROMPT, params, Handoff(decode_instance=1, num_blocks=3)))
    assert sent == [Accepted("r")]
    assert engine.added == [("r", 1, 1, True)]  # one token here, decode does the rest; blocks held
    for computed in (4, 6, 8):
        engine.compute("r", computed)
        assert role.after_step() == []
    engine.end("r", "length")
    role.after_step()
    role.after_step()  # nothing more to send
    assert pushed(sent) == [KVChunk("r", 0, 1, 0, 1), KVChunk("r", 0, 1, 1, 1), KVChunk("r", 0, 1, 2, 1)]
    assert kv.calls == [("send", "r", 1, [20]), ("send", "r", 1, [21]), ("send", "r", 1, [22])]
    assert [call[1] for call in runner.to_followers] == ["send"] * 3  # every rank sends its share
    assert engine.released == ["r"] and kv.reaped == 5


def test_the_blocks_the_decode_instance_has_cached_are_not_sent() -> None:
    role, engine, kv, _, sent = prefill_role()
    role.handle(Prefill("r", PROMPT, SamplingParams(max_tokens=5), Handoff(decode_instance=2, num_blocks=2)))
    engine.compute("r", 4)
    role.after_step()
    assert kv.calls == []  # the first block is in the decode instance's prefix cache
    engine.compute("r", 10)
    engine.end("r", "length")
    role.after_step()
    assert kv.calls == [("send", "r", 2, [21, 22])]
    assert pushed(sent) == [KVChunk("r", 0, 2, 0, 2)]  # counted in the decode instance's reserved blocks


def test_a_prompt_that_ended_at_its_first_token_sends_no_more_and_frees_its_blocks() -> None:
    for ending in ("stop", None):  # a stop token; an abort
        role, engine, kv, _, _sent = prefill_role()
        role.handle(Prefill("r", PROMPT, SamplingParams(max_tokens=5), Handoff(decode_instance=1, num_blocks=3)))
        engine.compute("r", 4)
        role.after_step()
        engine.end("r", ending)
        role.after_step()
        assert kv.calls == [("send", "r", 1, [20])], ending
        assert engine.released == ["r"] and not engine.held


def test_a_prompt_with_no_decode_instance_holds_no_blocks_and_sends_nothing() -> None:
    role, engine, kv, _, sent = prefill_role()
    role.handle(Prefill("r", PROMPT, SamplingParams(max_tokens=1), None))
    engine.compute("r", 10)
    engine.end("r", "length")
    role.after_step()
    assert engine.added == [("r", 1, 0, False)] and kv.calls == [] and sent == [Accepted("r")]


def test_an_invalid_prompt_is_refused_and_other_messages_are_not_the_roles() -> None:
    role, _, _, _, sent = prefill_role()
    role.handle(Prefill("bad", [], SamplingParams(), Handoff(1, 1)))
    assert isinstance(sent[0], Rejected) and isinstance(sent[0].error, InvalidRequestError)
    assert role.handle(Accepted("x")) is False
    assert role.after_step() == [] and pushed(sent) == []
