"""What Workflows reads from Worker code: durations, step config and its retry delays, timestamps, the
JSON that results are persisted as, and the errors a failed step raises again on replay."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from workers.workflows import NonRetryableError

from edge_runtime.bindings.workflows.config import (
    NotPersistableError,
    StepPolicy,
    WorkflowStepError,
    decode,
    duration_s,
    encode,
    epoch_s,
    error_record,
    rebuild_error,
)
from edge_runtime.bindings.workflows.definitions import check_instance_id


@pytest.mark.parametrize(("value", "seconds"), [
    (250, 0.25), (0, 0.0), ("10 seconds", 10.0), ("1 second", 1.0), ("1 minute", 60.0), ("1.5 hours", 5400.0),
    ("2 days", 172800.0), ("1 week", 604800.0), ("500 milliseconds", 0.5), (" 3  Minutes ", 180.0),
])
def test_durations(value: object, seconds: float) -> None:
    assert duration_s(value, "x") == seconds


@pytest.mark.parametrize("value", ["ten seconds", "10 fortnights", "", -1, True, None, float("nan")])
def test_bad_durations_name_what_to_give(value: object) -> None:
    with pytest.raises(ValueError, match="nap: .* is not a duration"):
        duration_s(value, "nap")


def test_default_policy_is_cloudflares() -> None:
    policy = StepPolicy.from_config(None, "s")
    assert (policy.limit, policy.delay_s, policy.backoff, policy.timeout_s) == (5, 10.0, "exponential", 600.0)
    assert [policy.retry_delay_s(n) for n in (1, 2, 3)] == [10.0, 20.0, 40.0]


@pytest.mark.parametrize(("backoff", "delays"), [
    ("constant", [2.0, 2.0, 2.0]), ("linear", [2.0, 4.0, 6.0]), ("exponential", [2.0, 4.0, 8.0]),
])
def test_backoffs(backoff: str, delays: list[float]) -> None:
    policy = StepPolicy.from_config({"retries": {"limit": 3, "delay": "2 seconds", "backoff": backoff},
                                     "timeout": 1500}, "s")
    assert [policy.retry_delay_s(n) for n in (1, 2, 3)] == delays
    assert policy.timeout_s == 1.5


@pytest.mark.parametrize(("config", "error", "message"), [
    ("fast", TypeError, "config must be a dict"),
    ({"retry": {}}, TypeError, "unknown key\\(s\\) 'retry'"),
    ({"retries": {"limit": 1}}, TypeError, 'retries must be a dict with "limit" and "delay"'),
    ({"retries": {"limit": -1, "delay": 0}}, ValueError, "retries.limit must be a whole number"),
    ({"retries": {"limit": 1, "delay": 0, "backoff": "random"}}, ValueError, "retries.backoff must be one of"),
    ({"timeout": "soon"}, ValueError, "timeout: 'soon' is not a duration"),
])
def test_bad_config_is_a_clear_error(config: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        StepPolicy.from_config(config, "step 'x'")


def test_timestamps() -> None:
    when = datetime(2026, 12, 24, 9, 0, tzinfo=UTC)
    assert epoch_s(when, "t") == epoch_s("2026-12-24T09:00:00Z", "t") == epoch_s(when.timestamp(), "t")
    with pytest.raises(ValueError, match="is not a time"):
        epoch_s("tomorrow", "t")


def test_values_round_trip_as_json_with_datetimes() -> None:
    value = {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "nested": {"none": None, "list": [1, "a"]}}
    back = decode(encode(value, "v"))
    assert back == value and back.nested.list == [1, "a"]
    with pytest.raises(NotPersistableError, match="the result cannot be persisted"):
        encode({"x": {1, 2}}, "the result")
    with pytest.raises(NotPersistableError):
        encode(float("inf"), "the result")


@pytest.mark.parametrize(("error", "rebuilt_type"), [
    (ValueError("bad"), ValueError), (KeyError("k"), KeyError), (NonRetryableError("stop"), NonRetryableError),
    (type("QuotaError", (Exception,), {})("over"), WorkflowStepError),
    (ExceptionGroup("two", [ValueError(1), ValueError(2)]), WorkflowStepError),
])
def test_errors_are_rebuilt_by_name(error: Exception, rebuilt_type: type) -> None:
    record = error_record(error)
    rebuilt = rebuild_error(record)
    assert type(rebuilt) is rebuilt_type
    assert error_record(rebuilt) == record


@pytest.mark.parametrize("bad", ["", "-x", "a b", "é", "x" * 101, 5])
def test_instance_ids_follow_cloudflares_rule(bad: object) -> None:
    assert check_instance_id("ok_id-1") == "ok_id-1"
    assert len(check_instance_id(None)) == 36
    with pytest.raises(ValueError, match="not a valid instance id"):
        check_instance_id(bad)
