"""Sequence: token views, ids and arrival order, and the computed/uncomputed split."""

from __future__ import annotations

import pytest

from gpu_backend.engine.sampling_params import SamplingParams
from gpu_backend.engine.sequence import Sequence, SequenceStatus
from gpu_backend.errors import InvalidRequestError


def test_new_sequence_is_waiting_with_nothing_computed() -> None:
    seq = Sequence([5, 6, 7])
    assert seq.status is SequenceStatus.WAITING and not seq.is_finished
    assert (seq.num_tokens, seq.num_prompt_tokens, seq.num_completion_tokens) == (3, 3, 0)
    assert seq.prompt_token_ids == [5, 6, 7] and seq.completion_token_ids == []
    assert (seq.num_computed_tokens, seq.num_cached_tokens, seq.block_table) == (0, 0, [])
    assert seq.finish_reason is None and seq.output_logprobs == []
    assert seq.sampling_params == SamplingParams()


def test_append_token_grows_the_completion() -> None:
    seq = Sequence(iter([1, 2]))
    seq.append_token(9)
    seq.append_token(8)
    assert seq.token_ids == [1, 2, 9, 8]
    assert seq.prompt_token_ids == [1, 2] and seq.completion_token_ids == [9, 8]
    assert seq.num_completion_tokens == 2 and seq.last_token_id == 8


def test_ids_and_arrival_order_increase() -> None:
    first, second = Sequence([1]), Sequence([1])
    assert second.seq_id > first.seq_id
    assert second.arrival_order > first.arrival_order
    assert second.arrival_time >= first.arrival_time
    assert first.request_id == str(first.seq_id)


def test_explicit_ids_are_kept() -> None:
    seq = Sequence([1], request_id="req-7", seq_id=1234)
    assert (seq.seq_id, seq.request_id) == (1234, "req-7")


def test_empty_prompt_is_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        Sequence([])


def test_is_prefill_until_only_the_last_generated_token_is_uncomputed() -> None:
    seq = Sequence([1, 2, 3, 4])
    assert seq.is_prefill and seq.num_uncomputed_tokens == 4
    seq.num_computed_tokens = 3  # only the prompt's last token left: still prompt work
    assert seq.is_prefill and seq.num_uncomputed_tokens == 1
    seq.num_computed_tokens = 4
    seq.append_token(5)
    assert not seq.is_prefill and seq.num_uncomputed_tokens == 1
    seq.num_computed_tokens = 0  # preempted: everything is recomputed
    assert seq.is_prefill
