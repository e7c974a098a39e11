"""The service's error types: Cloudflare's envelope, the binding's "<code>: <message>", OpenAI's shape."""

from __future__ import annotations

import pytest

from gpu_backend.errors import (CheckpointError, InvalidRequestError, PromptTooLongError, InstanceFailedError,
                                 InstanceLostError)
from gpu_backend.server.errors import (
    BadInputError,
    BadTokenError,
    EngineFailedError,
    InputTooLongError,
    MissingTokenError,
    NoSuchModelError,
    OverloadedError,
    from_engine_error,
)


def test_no_such_model_matches_workers_ai() -> None:
    error = NoSuchModelError("@cf/meta/nope", ["@cf/edgewise/tiny-shakespeare"])
    assert (error.status, error.code, error.openai_status) == (400, 5007, 404)
    assert error.envelope() == {
        "result": None, "success": False, "messages": [],
        "errors": [{"code": 5007, "message": "No such model @cf/meta/nope or task "
                                              "(this backend serves: @cf/edgewise/tiny-shakespeare)"}],
    }
    assert error.openai_body()["error"] | {"message": None} == {
        "message": None, "type": "invalid_request_error", "param": "model", "code": 5007}


def test_bad_input_reads_like_workers_ai() -> None:
    error = BadInputError("'prompt' and 'messages' are mutually exclusive: send one of them")
    assert (error.status, error.code) == (400, 5006)
    assert error.message == "AiError: Bad input: 'prompt' and 'messages' are mutually exclusive: send one of them"
    assert error.headers() == {}


def test_overloaded_tells_when_to_retry() -> None:
    error = OverloadedError("the request queue is full (64 waiting); retry shortly", retry_after_s=2)
    assert (error.status, error.code, error.openai_type) == (429, 3040, "rate_limit_error")
    assert error.headers() == {"retry-after": "2"}


def test_authentication_errors() -> None:
    assert (MissingTokenError().status, MissingTokenError().code) == (401, 10000)
    assert (BadTokenError().status, BadTokenError().code) == (403, 10000)
    assert "Bearer" in MissingTokenError().message


@pytest.mark.parametrize(("engine_error", "expected", "status"), [
    (PromptTooLongError("the prompt has 5000 tokens; this model takes at most 2047"), InputTooLongError, 413),
    (InvalidRequestError("temperature must be a finite number >= 0, got nan"), BadInputError, 400),
    (CheckpointError("weights missing"), EngineFailedError, 500),
])
def test_engine_errors_map_to_service_errors(engine_error, expected, status) -> None:
    error = from_engine_error(engine_error)
    assert type(error) is expected and error.status == status
    assert str(engine_error) in error.message


def test_a_restarting_instance_asks_for_a_retry_and_one_that_failed_for_good_does_not() -> None:
    restarting = from_engine_error(InstanceLostError("rank 1 exited with code -9"))
    assert restarting.status == 503 and restarting.headers() == {"retry-after": "5"}
    gone = from_engine_error(InstanceFailedError("rank 1 exited with code -9; every restart is used up (3 of 3)"))
    assert gone.status == 503 and gone.headers() == {}
    assert "failed permanently and the backend must be restarted" in gone.message and "3 of 3" in gone.message
